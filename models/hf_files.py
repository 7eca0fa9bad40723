"""A GGUF file of a Hugging Face repository, `hf:ORG/REPO/FILE.gguf[@REVISION]`, downloaded with huggingface_hub
(`hf_hub_download`: HF_ENDPOINT for a mirror, HF_TOKEN for a gated repository, resumed after a cut from its own
cache) at the commit the revision resolves to, so the revision cannot move under the download. The hub's SHA-256 of
the file (X-Linked-Etag of an LFS file) is returned for the caller to check: the coordinator's store
(coordinator/service/hf_import.py) and an agent's `models pull hf:...` (agent/model_fetch.py) both do."""

import dataclasses
import os
import pathlib
import re

from fleetfit.models.errors import ModelError

PREFIX = "hf:"
REF = re.compile(r"hf:([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})/((?:[\w.-]{1,200}/){0,8}[\w.-]{1,200}\.gguf)"
                 r"(?:@([\w./-]{1,200}))?")
DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class HfRef:
    repo_id: str
    filename: str
    revision: str | None

    @property
    def stem(self) -> str:
        return pathlib.PurePosixPath(self.filename).stem


@dataclasses.dataclass(frozen=True)
class Downloaded:
    path: pathlib.Path  # in `cache_dir` (huggingface_hub's layout)
    commit: str  # the commit the revision resolved to
    sha256: str | None  # the hub's SHA-256 of the file, when it gave one (an LFS file's X-Linked-Etag)


def is_hf_ref(ref: str) -> bool:
    return ref.startswith(PREFIX)


def parse(ref: str) -> HfRef:
    m = REF.fullmatch(ref.strip())
    if not m or ".." in ref:
        raise ModelError(f"{ref[:120]!r} is not a Hugging Face file (hf:ORG/REPO/FILE.gguf or "
                         "hf:ORG/REPO/FILE.gguf@REVISION)")
    return HfRef(f"{m.group(1)}/{m.group(2)}", m.group(3), m.group(4))


def download(ref: str, cache_dir: pathlib.Path, needs: str = "the coordinator") -> Downloaded:
    """`ref` (hf:...) downloaded into `cache_dir` at its revision's commit; ModelError (one line) for a bad
    reference, no huggingface_hub (`needs`: where it is missing), an unreachable hub or mirror, or a missing file."""
    hf = parse(ref)
    try:
        import huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError
    except ImportError:
        raise ModelError(f"hf: models need huggingface_hub on {needs}: pip install 'fleetfit[hf]'") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not when huggingface_hub was imported
    try:
        url = huggingface_hub.hf_hub_url(hf.repo_id, hf.filename, revision=hf.revision, endpoint=endpoint)
        meta = huggingface_hub.get_hf_file_metadata(url)
        if not meta.commit_hash:
            raise ModelError(f"{endpoint or 'the hub'} did not say which commit {ref} is (no X-Repo-Commit)")
        path = pathlib.Path(huggingface_hub.hf_hub_download(hf.repo_id, hf.filename, revision=meta.commit_hash,
                                                            cache_dir=cache_dir, endpoint=endpoint))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"cannot download {ref} from {endpoint or 'huggingface.co'}: "
                         f"{' '.join(str(exc).split())[:200]}") from None
    etag = (meta.etag or "").strip('"').lower()
    return Downloaded(path, meta.commit_hash, etag if DIGEST.fullmatch(etag) else None)
