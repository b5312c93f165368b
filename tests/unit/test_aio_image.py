"""tools/build-image (kuryr/aio/image.py): what it asks of docker, tar and ctr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kuryr.aio import image, procs, rootfs

TREE = rootfs.Tree(Path("/cache/rootfs/kuryr-0123456789abcdef/rootfs"), "0123456789abcdef",
                   "0.1.0")


def test_tags_are_the_version_and_latest_and_containerd_names_them_in_full():
    built = image.Image.of(TREE)
    assert built.tags == ["kuryr/kuryr-k8s:0.1.0", "kuryr/kuryr-k8s:latest"]
    assert built.containerd_refs() == ["docker.io/kuryr/kuryr-k8s:0.1.0",
                                       "docker.io/kuryr/kuryr-k8s:latest"]
    other = image.Image.of(TREE, "registry.example.com/kuryr")
    assert other.tags[1] == "registry.example.com/kuryr:latest"


def test_labels_carry_the_version_and_the_build_id():
    labels = image.Image.of(TREE).labels
    assert labels[image.LABEL_VERSION] == "0.1.0"
    assert labels[image.LABEL_BUILD_ID] == "0123456789abcdef"
    assert labels[image.LABEL_TITLE] == "kuryr-k8s"


def test_import_argv_sets_path_labels_and_a_harmless_default_command():
    argv = image.Image.of(TREE).import_argv()
    assert argv[0] == "import"
    assert argv[-2:] == ["-", "kuryr/kuryr-k8s:0.1.0"]  # the tar comes on stdin
    changes = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--change"]
    # containerd gives a process no default PATH: the image must.
    assert "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in changes
    assert 'CMD ["kuryr", "--version"]' in changes
    assert not any(change.startswith("ENTRYPOINT") for change in changes)
    [label] = [change for change in changes if change.startswith("LABEL ")]
    # Dockerfile LABEL key="value" pairs: values quoted (JSON strings).
    assert f'{image.LABEL_BUILD_ID}="0123456789abcdef"' in label
    assert f'{image.LABEL_VERSION}="0.1.0"' in label


def test_the_tar_keeps_owners_by_number_and_leaves_the_trees_marker_out():
    argv = image.tar_argv(TREE.path)
    assert argv[:3] == ["tar", "-C", str(TREE.path)]
    assert "--numeric-owner" in argv
    assert f"--exclude=./{rootfs.COMPLETE}" in argv
    assert argv[-3:] == ["-cf", "-", "."]


class FakeContainerd:
    """ctr's answers: `images list name==REF` and `content get DIGEST`."""

    socket = Path("/run/containerd.sock")

    def __init__(self, images: dict[str, str], manifests: dict[str, dict]) -> None:
        self.images = images  # ref -> manifest digest
        self.manifests = manifests
        self.calls: list[tuple[str, ...]] = []

    def ctr(self, *args: str, timeout: float = 120) -> str:
        self.calls.append(args)
        if args[:2] == ("images", "list"):
            refs = [args[2].removeprefix("name==")] if args[2:] else list(self.images)
            return "REF TYPE DIGEST SIZE PLATFORMS LABELS\n" + "".join(
                f"{ref} application/vnd.docker.distribution.manifest.v2+json "
                f"{self.images[ref]} 240.0 MiB linux/amd64 -\n"
                for ref in refs if ref in self.images)
        if args[:2] == ("content", "get"):
            if args[2] not in self.manifests:
                raise procs.StackError("not found")
            return json.dumps(self.manifests[args[2]])
        if args[:2] == ("images", "import"):
            return ""
        if args[:2] == ("images", "remove"):
            del self.images[args[2]]
            return ""
        raise AssertionError(args)


def test_containerd_config_digest_is_read_from_the_images_manifest():
    fake = FakeContainerd({"docker.io/kuryr/kuryr-k8s:latest": "sha256:m1"},
                          {"sha256:m1": {"config": {"digest": "sha256:c1"}}})
    assert image.containerd_config_digest(fake, "docker.io/kuryr/kuryr-k8s:latest") == \
        "sha256:c1"
    assert image.containerd_config_digest(fake, "docker.io/kuryr/kuryr-k8s:0.1.0") is None


class FakeBuilder(image.Builder):
    def __init__(self) -> None:
        super().__init__("unix:///run/docker.sock", image.Image.of(TREE))
        self.docker: list[tuple[str, ...]] = []

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        self.docker.append(args)
        return ""


@pytest.mark.parametrize(("present", "imports"), [
    ({"docker.io/kuryr/kuryr-k8s:0.1.0": "sha256:m1",
      "docker.io/kuryr/kuryr-k8s:latest": "sha256:m1"}, False),
    ({"docker.io/kuryr/kuryr-k8s:0.1.0": "sha256:m1"}, True),  # :latest missing
    ({"docker.io/kuryr/kuryr-k8s:0.1.0": "sha256:old",
      "docker.io/kuryr/kuryr-k8s:latest": "sha256:old"}, True),  # another build
])
def test_containerd_is_imported_into_only_when_it_lacks_this_image(tmp_path, present,
                                                                   imports):
    fake = FakeContainerd(present, {"sha256:m1": {"config": {"digest": "sha256:c1"}},
                                    "sha256:old": {"config": {"digest": "sha256:c0"}}})
    builder = FakeBuilder()
    done = builder.into_containerd(fake, "sha256:c1", tmp_path)  # type: ignore[arg-type]
    imported = ("images", "import", str(tmp_path / "kuryr-k8s-image.tar")) in fake.calls
    assert imported == imports
    assert bool(done) == imports
    saved = [call for call in builder.docker if call[0] == "save"]
    assert saved == ([("save", "-o", str(tmp_path / "kuryr-k8s-image.tar"),
                       "kuryr/kuryr-k8s:0.1.0", "kuryr/kuryr-k8s:latest")] if imports else [])


def test_earlier_builds_kept_under_their_id_are_removed_from_containerd():
    labelled = {"config": {"Labels": {image.LABEL_BUILD_ID: "old"}}}
    fake = FakeContainerd(
        {"docker.io/kuryr/kuryr-k8s:latest": "sha256:m1",
         "sha256:c1": "sha256:m1",  # this build, under its id
         "sha256:c0": "sha256:m0",  # an earlier build, no tag left
         "sha256:b1": "sha256:mb",  # busybox, not ours
         "docker.io/library/busybox:latest": "sha256:mb"},
        {"sha256:c1": {"config": {"Labels": {image.LABEL_BUILD_ID: "new"}}},
         "sha256:c0": labelled, "sha256:cx": labelled})
    done = image.prune_containerd(fake, keep="sha256:c1")  # type: ignore[arg-type]
    assert done == ["removed the earlier build c0 from containerd"]
    assert set(fake.images) == {"docker.io/kuryr/kuryr-k8s:latest", "sha256:c1", "sha256:b1",
                                "docker.io/library/busybox:latest"}
