"""A GGUF file of a Hugging Face repository imported into the model store: `hf:ORG/REPO/FILE.gguf[@REVISION]`.

The coordinator downloads it (models/hf_files.py: pinned to the commit the revision resolves to, HF_ENDPOINT and
HF_TOKEN honoured); the file's SHA-256 (the hub's X-Linked-Etag of an LFS file) is checked by the store as any
upload is, and devices then fetch it from the coordinator, never from the hub.
"""

import shutil

from fleetfit.coordinator.service.model_store import ModelStore, StoreRefused, checked_name
from fleetfit.models import hf_files
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb

is_hf_ref = hf_files.is_hf_ref


def import_file(store: ModelStore, ref: str, name: str = "", added_by: str = "") -> pb.StoredModel:
    """Download `ref` (hf:...) into the store as `name` (default: the file's stem); StoreRefused (one line) for a
    bad reference, an unreachable hub or mirror, a file that is not there, or bytes that do not match the hub's
    SHA-256."""
    try:
        name = checked_name(name or hf_files.parse(ref).stem)
        found = hf_files.download(ref, store.root / "hf-cache")
    except ModelError as exc:
        raise StoreRefused(str(exc)) from None
    source = f"{ref.split('@')[0]}@{found.commit[:12]}"
    try:
        return store.add_file(found.path, name, f"{source} by {added_by}" if added_by else source, found.sha256)
    finally:  # stored or refused, the download is done with (a cut one stays: hf_hub_download resumes it)
        shutil.rmtree(store.root / "hf-cache", ignore_errors=True)
