"""The sub-commands of ``python -m tlviz`` / ``tlviz``, one module each (`tlviz.cli` finds them by name).

Every command follows one exit-status contract (`EXIT_OK`, `EXIT_ERROR`, `EXIT_REFUSED`, plus
`EXIT_INTERNAL` for a crash of tlviz itself) and reports what it found as `Finding`s: ``--json``
carries them as ``"findings": [{id, severity, area, title, evidence, fix}]`` (`findings_json`), the
text output prints each as ``SEVERITY: title. fix``, and the status is `exit_status` of the same list,
so the three always agree.

Shared by the commands that take a model and an image set: `load_inputs`.
"""

from __future__ import annotations

#: Nothing at error level.
EXIT_OK = 0
#: At least one error-level finding (a fine-tuning run that failed, diverged or did not learn included).
EXIT_ERROR = 1
#: The input was refused (model, image set, arguments): nothing was measured; the message says why.
EXIT_REFUSED = 2
#: tlviz itself failed (a bug, not a finding about the model): the traceback is printed.
EXIT_INTERNAL = 3


def exit_status(findings) -> int:
    """The exit status for what a command found: `EXIT_ERROR` when any finding is error-level, else `EXIT_OK`.

    Args:
        findings: `tlviz.findings.Finding` objects.
    """
    return EXIT_ERROR if any(f.severity == "error" for f in findings) else EXIT_OK


def findings_json(findings) -> list[dict]:
    """Findings as the ``--json`` output of every command carries them: ``[{id, severity, area, title, evidence,
    fix}]`` (the shape of ``diagnose --json``), JSON-safe."""
    from tlviz.jsonsafe import json_safe

    return [json_safe(f.to_dict()) for f in findings]


def print_findings(findings, file=None) -> None:
    """Print each finding as one ``SEVERITY: title. fix`` line (the text output of every command but diagnose)."""
    for f in findings:
        text = f"{f.severity.upper()}: {f.title.rstrip('.')}."
        if f.fix:
            text += f" {f.fix}"
        print(text, file=file)


def load_inputs(model_path, images_path, progress) -> tuple:
    """Load the model, then the image set at the model's input size, saying so on the progress line.

    Args:
        model_path: the model file (``.keras`` or ``.h5``).
        images_path: a folder with one sub-folder per class, or a ``.zip`` of one.
        progress: the command's reporter (`tlviz.progress.reporter_for`).

    Returns:
        ``(loaded, source, images)``: the `LoadedModel`, the `ImageSource` the images came from (it
        can be read again, e.g. to compare resize methods) and the decoded `ImageSet`.

    Raises:
        ModelRefused: the model file cannot be loaded.
        ImageSetRefused: the image set cannot be used.
    """
    from tlviz.imagesets import open_source
    from tlviz.models import load_model

    progress(0.0, "Loading the model…")
    loaded = load_model(model_path)
    progress(0.0, "Loading the images…")
    source = open_source(images_path)
    return loaded, source, source.load(loaded.image_size, loaded.channels)
