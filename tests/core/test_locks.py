"""Folder locks: a held folder is refused without waiting, and free again once released."""

import pytest

from vibbench.core.errors import VibbenchError
from vibbench.core.locks import folder_lock


def test_a_held_folder_is_refused_and_released_on_exit(tmp_path):
    # flock locks belong to an open file, so a second open in this process contends like another process
    with folder_lock(tmp_path, "output folder", wait=False):
        with pytest.raises(VibbenchError, match=f"another vibbench process is writing the output folder {tmp_path}"):
            with folder_lock(tmp_path, "output folder", wait=False):
                pass
    with folder_lock(tmp_path, "output folder", wait=False):
        assert (tmp_path / ".lock").is_file()
