"""The fake Hub (tests/hub_server.py) against the real huggingface_hub client: what the hub tests rely on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import OTHER_TOKEN, FakeHub, git_blob_sha1
from hub_server import USER_TOKEN as TOKEN
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "folder"
    (root / "unet").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    (root / "model_index.json").write_text('{"_class_name": "X"}\n')
    (root / "unet" / "weights.safetensors").write_bytes(os.urandom(3000))
    (root / "checkpoints" / "optimizer.bin").write_bytes(b"state")
    (root / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- hfddpm\n---\n# Card\n")
    return root


@pytest.mark.parametrize("xet", [True, False], ids=["xet-pipeline", "legacy-commit"])
def test_upload_folder_roundtrip(hub, folder, tmp_path, monkeypatch, xet):
    # huggingface_hub uses a streamed multi-commit upload when hf_xet is installed and create_commit otherwise
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)
    api = HfApi(endpoint=hub.url, token=TOKEN)
    url = api.create_repo("user/x", exist_ok=True)
    assert url == f"{hub.url}/user/x" and url.repo_id == "user/x"
    assert api.create_repo("user/x", exist_ok=True).repo_id == "user/x"

    info = api.upload_folder(
        repo_id="user/x", folder_path=folder, ignore_patterns=["checkpoints/*"], commit_message="first"
    )
    files = hub.files("user/x")
    assert sorted(files) == [".gitattributes", "README.md", "model_index.json", "unet/weights.safetensors"]
    assert files["unet/weights.safetensors"] == (folder / "unet" / "weights.safetensors").read_bytes()
    assert info.oid == hub.commits("user/x")[-1].oid

    # unchanged files are skipped by the client: no new commit
    api.upload_folder(repo_id="user/x", folder_path=folder, ignore_patterns=["checkpoints/*"], commit_message="same")
    assert [c.title for c in api.list_repo_commits("user/x")] == ["first", "initial commit"]

    # a changed file and a deletion pattern: one new commit, stale file gone
    (folder / "model_index.json").write_text('{"_class_name": "Y"}\n')
    (folder / "unet" / "weights.safetensors").unlink()
    (folder / "unet" / "other.safetensors").write_bytes(b"new")
    api.upload_folder(
        repo_id="user/x",
        folder_path=folder,
        ignore_patterns=["checkpoints/*"],
        delete_patterns=["unet/*"],
        commit_message="second",
    )
    model = api.model_info("user/x")
    assert sorted(s.rfilename for s in model.siblings) == [
        ".gitattributes",
        "README.md",
        "model_index.json",
        "unet/other.safetensors",
    ]
    assert model.sha == hub.commits("user/x")[-1].oid
    assert model.card_data.license == "apache-2.0" and model.tags == ["hfddpm"]
    assert api.list_repo_files("user/x") == [s.rfilename for s in model.siblings]


def test_downloads_headers_and_revisions(hub, folder, tmp_path):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("user/x")
    first = api.upload_folder(repo_id="user/x", folder_path=folder, commit_message="v1").oid
    (folder / "model_index.json").write_text('{"_class_name": "V2"}\n')
    api.upload_folder(repo_id="user/x", folder_path=folder, commit_message="v2")

    meta = get_hf_file_metadata(hf_hub_url("user/x", "model_index.json"))
    assert meta.commit_hash == hub.commits("user/x")[-1].oid
    assert meta.etag == git_blob_sha1(b'{"_class_name": "V2"}\n') and meta.size == 22

    path = hf_hub_download("user/x", "model_index.json", cache_dir=tmp_path / "c1")
    assert json.loads(Path(path).read_text()) == {"_class_name": "V2"}
    old = hf_hub_download("user/x", "model_index.json", revision=first, cache_dir=tmp_path / "c1")
    assert json.loads(Path(old).read_text()) == {"_class_name": "X"}

    snapshot = Path(snapshot_download("user/x", cache_dir=tmp_path / "c2"))
    assert (snapshot / "unet" / "weights.safetensors").read_bytes() == (
        folder / "unet" / "weights.safetensors"
    ).read_bytes()
    assert (snapshot / "checkpoints" / "optimizer.bin").is_file()  # no ignore pattern given above

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/x", "missing.txt", cache_dir=tmp_path / "c1")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/nope")


def test_auth_and_private_repos(hub, folder):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("user/secret", private=True)
    assert api.model_info("user/secret").private is True

    with pytest.raises(RepositoryNotFoundError):  # invisible without a token (401 RepoNotFound, as on the Hub)
        HfApi(endpoint=hub.url, token=False).model_info("user/secret")
    with pytest.raises(RepositoryNotFoundError):  # and to other users
        HfApi(endpoint=hub.url, token=OTHER_TOKEN).model_info("user/secret")

    with pytest.raises(HfHubHTTPError) as bad_token:
        HfApi(endpoint=hub.url, token="hf_wrong").create_repo("user/y")
    assert bad_token.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as other_namespace:
        HfApi(endpoint=hub.url, token=OTHER_TOKEN).create_repo("user/y")
    assert other_namespace.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo("user/secret")
    assert exists.value.response.status_code == 409
    assert api.whoami()["name"] == "user"

    # the token never reaches the request log
    assert TOKEN not in json.dumps(hub.requests)


def test_failure_modes(hub, folder):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    hub.set_failure(500)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("user/x")
    assert err.value.response.status_code == 500

    hub.set_failure(404, endpoints=["commit"])
    api.create_repo("user/x")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(repo_id="user/x", folder_path=folder, commit_message="fails")
    assert err.value.response.status_code == 404
    hub.clear_failure()
    assert [c.title for c in hub.commits("user/x")] == ["initial commit"]


def test_history_persists_across_restarts(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub(tmp_path / "hub", tokens={TOKEN: "user"}) as first:
        api = HfApi(endpoint=first.url, token=TOKEN)
        api.create_repo("user/x")
        api.upload_folder(repo_id="user/x", folder_path=folder, commit_message="kept")
        files = first.files("user/x")
    with FakeHub(tmp_path / "hub", tokens={TOKEN: "user"}) as second:
        assert second.files("user/x") == files
        assert [c.title for c in second.commits("user/x")] == ["initial commit", "kept"]


def test_client_configured_by_environment(hub, folder, tmp_path):
    """HF_ENDPOINT is read when huggingface_hub is imported: a fresh process is how users meet the server."""
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("user/x")
    api.upload_folder(repo_id="user/x", folder_path=folder, commit_message="v1")
    code = (
        "import sys; from huggingface_hub import snapshot_download, model_info;"
        "print(model_info('user/x').sha); print(snapshot_download('user/x', allow_patterns=['*.json']))"
    )
    # the fixture exported HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE=0 for child processes
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    sha, snapshot = out.stdout.split()
    assert sha == hub.commits("user/x")[-1].oid
    assert sorted(p.name for p in Path(snapshot).iterdir()) == ["model_index.json"]
