"""The README's Python example runs as written."""

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
