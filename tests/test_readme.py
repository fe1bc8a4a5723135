"""The README's Python example runs as written."""

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["array"].shape == (2, 28, 28, 1)
    assert len(namespace["images"]) == 2 and namespace["images"][0].size == (28, 28)
    assert (tmp_path / "my-pipeline" / "pipeline_hfddpm.py").is_file()
    assert type(namespace["pipe"]).__name__ == "HFDDPMPipeline"


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    command = re.search(r"The second installs.*?```bash\n(.*?)\n```", text, re.S).group(1)
    assert command in ci.splitlines()


def test_readme_training_from_python_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Training", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    folder = namespace["folder"]
    assert folder == Path("tiny-run") and (tmp_path / "tiny-run" / "model_index.json").is_file()
    metrics = json.loads((tmp_path / "tiny-run" / "train_metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["training_config"]["preset"] == "tiny"
    saved = json.loads((tmp_path / "tiny-run" / "training_config.json").read_text())
    assert saved["format_version"] == 1 and saved["config"]["max_train_steps"] == 4
    assert saved["resolved"]["resolution"] == 32 and saved["resolved"]["num_classes"] == 10


def test_readme_editing_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Editing: inpainting and image-to-image", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("num_inference_steps=25", "num_inference_steps=3")  # the same calls, fewer steps
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["restored"].shape == (2, 1, 28, 28)
    assert len(namespace["eights"]) == 2 and namespace["eights"][0].size == (28, 28)
