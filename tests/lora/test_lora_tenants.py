"""The tenants file's LoRA fields: which adapters a tenant may use, its default one, and
whether it may load and unload adapters; each mistake named with its line."""

from __future__ import annotations

import pytest

from serving.tenants import hash_key, load_tenants

HEAD = f'[tenants.acme]\napi_key_sha256 = ["{hash_key("k")}"]\n'


def test_lora_fields_are_read(tmp_path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(HEAD + 'loras = ["sql", "chat"]\ndefault_lora = "sql"\nadmin = true\n')
    [acme] = load_tenants(path)
    assert (acme.loras, acme.default_lora, acme.admin) == (("sql", "chat"), "sql", True)
    path.write_text(HEAD)
    [acme] = load_tenants(path)
    assert (acme.loras, acme.default_lora, acme.admin) == (None, None, False)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('loras = "sql"\n', ":3: tenants.acme.loras: must be a list of adapter names"),
        ("default_lora = 3\n", ":3: tenants.acme.default_lora: must be an adapter name"),
        (
            'loras = ["sql"]\ndefault_lora = "chat"\n',
            ":4: tenants.acme.default_lora: 'chat' is not one of its loras",
        ),
        ('admin = "yes"\n', ":3: tenants.acme.admin: must be true or false"),
    ],
)
def test_bad_lora_fields_are_refused_with_their_line(tmp_path, lines, message) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(HEAD + lines)
    with pytest.raises(ValueError, match=message):
        load_tenants(path)
