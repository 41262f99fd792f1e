"""Deprecated alias of xferlab.files (the old name shadowed the standard library's `io`); kept only so branches
written against it still import after the merge. Import xferlab.files."""

from xferlab.files import save_figure, save_npz, save_torch, staged_dir, write_file, write_json, write_text  # noqa: F401
