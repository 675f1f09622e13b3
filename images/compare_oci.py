"""Compares two OCI archives of one image (images/build.sh verify-reproducible): the same image or what differs.

usage: python images/compare_oci.py A.oci.tar B.oci.tar
Prints the manifest digests, then, where they differ, which of the configuration, the layer digests and the
layers' file lists (path, type, mode, owner, size, mtime, link target, content hash) differ, with the first few
differing paths. Exit 0 when the manifests are identical (so everything below them is), 1 otherwise.
Standard library only: build.sh runs it with whatever Python it has.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from dataclasses import dataclass

SHOWN = 20  # differing paths printed per layer


@dataclass
class Archive:
    manifest_digest: str
    config: dict
    layer_digests: list[str]
    files: list[dict[str, tuple]]  # per layer: path -> (type, mode, uid, gid, size, mtime, linkname, sha256)

    @classmethod
    def read(cls, path: str) -> Archive:
        with tarfile.open(path) as oci:

            def blob(digest: str):
                return oci.extractfile("blobs/sha256/" + digest.split(":", 1)[1])

            index = json.load(oci.extractfile("index.json"))
            digest = index["manifests"][0]["digest"]
            manifest = json.load(blob(digest))
            config = json.load(blob(manifest["config"]["digest"]))
            digests = [layer["digest"] for layer in manifest["layers"]]
            files = []
            for layer_digest in digests:
                with tarfile.open(fileobj=blob(layer_digest), mode="r:*") as layer:
                    entries = {}
                    for member in layer:
                        content = ""
                        if member.isfile():
                            content = hashlib.sha256(layer.extractfile(member).read()).hexdigest()
                        entries[member.name] = (
                            member.type,
                            member.mode,
                            member.uid,
                            member.gid,
                            member.size,
                            member.mtime,
                            member.linkname,
                            content,
                        )
                    files.append(entries)
        return cls(digest, config, digests, files)


def compare(a: Archive, b: Archive) -> list[str]:
    """The differences, one line each; empty when the two are the same image."""
    if a.manifest_digest == b.manifest_digest:
        return []
    out = [f"manifest: {a.manifest_digest} != {b.manifest_digest}"]
    if a.config != b.config:
        keys = sorted(k for k in a.config.keys() | b.config.keys() if a.config.get(k) != b.config.get(k))
        out.append(f"config differs in: {', '.join(keys)}")
        for key in keys:
            out.append(f"  A {key}: {json.dumps(a.config.get(key))[:2000]}")
            out.append(f"  B {key}: {json.dumps(b.config.get(key))[:2000]}")
    if len(a.layer_digests) != len(b.layer_digests):
        out.append(f"layer count: {len(a.layer_digests)} != {len(b.layer_digests)}")
    for i, (da, db, fa, fb) in enumerate(
        zip(a.layer_digests, b.layer_digests, a.files, b.files, strict=False)
    ):
        if da == db:
            continue
        out.append(f"layer {i}: {da} != {db}")
        only_a, only_b = sorted(fa.keys() - fb.keys()), sorted(fb.keys() - fa.keys())
        changed = sorted(p for p in fa.keys() & fb.keys() if fa[p] != fb[p])
        out.append(
            f"layer {i}: {len(only_a)} paths only in A, {len(only_b)} only in B, {len(changed)} changed"
        )
        out += [f"  only in A: {p}" for p in only_a[:SHOWN]]
        out += [f"  only in B: {p}" for p in only_b[:SHOWN]]
        fields = ("type", "mode", "uid", "gid", "size", "mtime", "linkname", "sha256")
        for p in changed[:SHOWN]:
            what = [f for f, x, y in zip(fields, fa[p], fb[p], strict=True) if x != y]
            out.append(f"  changed: {p} ({', '.join(what)})")
        if fa == fb:
            out.append(
                f"layer {i}: same files, metadata and contents (the tar stream or compression differs)"
            )
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = Archive.read(argv[1]), Archive.read(argv[2])
    differences = compare(a, b)
    files = sum(len(layer) for layer in a.files)
    if not differences:
        print(f"reproducible: manifest {a.manifest_digest}, {len(a.layer_digests)} layers, {files} files")
        return 0
    print("not reproducible:")
    print("\n".join(differences))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
