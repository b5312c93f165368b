"""Reading the INI files kuryr-aio writes, as the services read them."""

import configparser


def parse_ini(text: str) -> configparser.ConfigParser:
    # [DEFAULT] as a section of its own, not inherited by the others.
    parser = configparser.ConfigParser(interpolation=None, default_section="-")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser
