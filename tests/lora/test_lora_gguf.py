"""GGUF LoRA files (llama.cpp's convert_lora_to_gguf.py layout): the same adapter as a PEFT
directory and as a GGUF file gives the same greedy ids and logprobs, both equal to PEFT's;
what our test writer writes is what llama.cpp's converter writes, where it is beside the
checkout."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from contract.sampling import SamplingParams
from modelfiles.lora_files import LoraError, read_lora
from scheduler import Engine
from tests.conftest import REPO_ROOT
from tests.lora.adapters import greedy_with_logprobs, peft_model, write_gguf_lora
from tests.lora.test_lora_files import BASE

CONVERTER = REPO_ROOT.parent / "peers" / "llama.cpp" / "convert_lora_to_gguf.py"


@pytest.mark.slow
def test_a_gguf_adapter_runs_as_its_peft_directory(random_adapted, tmp_path) -> None:
    # Not the rsLoRA adapter: the converter writes lora_alpha alone, so a GGUF file always
    # scales by alpha / rank (llama.cpp's reading too).
    peft_dir = random_adapted.adapters["all8"]
    gguf = write_gguf_lora(peft_dir, random_adapted.model_dir, tmp_path / "all8.gguf")
    engine = Engine.from_model_dir(
        random_adapted.model_dir,
        device="cpu",
        lora=(f"peft={peft_dir}", f"gguf={gguf}"),
        num_kv_blocks=64,
    )
    prompt = [1, 9, 80, 7, 300, 41]
    params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=True, ignore_eos=True)
    from_peft, from_gguf = engine.generate([prompt, prompt], params, loras=["peft", "gguf"])
    ids, logprobs = greedy_with_logprobs(peft_model(random_adapted.model_dir, peft_dir), prompt, 8)
    assert from_gguf.token_ids == from_peft.token_ids == ids
    assert from_gguf.logprobs == pytest.approx(logprobs, abs=1e-4)


def test_a_gguf_that_is_not_a_lora_adapter_is_refused(tmp_path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "model.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LoraError, match="a GGUF file, but not a LoRA adapter"):
        read_lora(path, BASE, 8)


@pytest.mark.slow
def test_the_test_writer_matches_llama_cpps_converter(random_adapted, tmp_path) -> None:
    if not CONVERTER.exists():
        pytest.skip(f"{CONVERTER} is absent")
    from gguf import GGUFReader

    peft_dir = random_adapted.adapters["all8"]
    theirs = tmp_path / "theirs.gguf"
    subprocess.run(
        [sys.executable, str(CONVERTER), "--base", str(random_adapted.model_dir), "--outtype",
         "f32", "--outfile", str(theirs), str(peft_dir)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    ours = write_gguf_lora(peft_dir, random_adapted.model_dir, tmp_path / "ours.gguf")
    read = {path: {t.name: np.array(t.data) for t in GGUFReader(path).tensors}
            for path in (theirs, ours)}  # fmt: skip
    assert sorted(read[theirs]) == sorted(read[ours])
    for name, array in read[theirs].items():
        np.testing.assert_array_equal(array, read[ours][name], err_msg=name)
    assert read_lora(theirs, BASE, 8).scaling == read_lora(ours, BASE, 8).scaling
