"""A zvt lane's configuration: refused at load with the key and the file named."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from drivers.zvt.session import ZvtSettings
from edged.errors import ConfigError
from tests.helpers import load_config as load

ROOT = Path(__file__).resolve().parent.parent


def lane(tmp_path: Path, body: str, store: str = "") -> Path:
    path = tmp_path / "edged.toml"
    path.write_text(f'{store}[[terminals]]\nid = "lane-4"\nkind = "zvt"\n{body}',
                    encoding="utf-8")
    return path


def test_a_tcp_and_a_serial_lane_load(tmp_path: Path) -> None:
    cfg = load(lane(tmp_path, 'address = "tcp://10.0.0.20:20007"\npassword = "000000"\n'
                    "ack_timeout = 2\n"))
    (term,) = cfg.terminals
    assert (term.kind, term.options["address"]) == ("zvt", "tcp://10.0.0.20:20007")
    cfg = load(lane(tmp_path, 'address = "serial:///dev/ttyUSB0"\npassword = "123456"\n'))
    assert cfg.terminals[0].options["address"] == "serial:///dev/ttyUSB0"


@pytest.mark.parametrize("body, key, words", [
    ('password = "000000"\n', "address", "is required"),
    ('address = "http://10.0.0.20"\npassword = "000000"\n', "address", "tcp:// or serial://"),
    ('address = "tcp://10.0.0.20:port"\npassword = "000000"\n', "address", "bad port"),
    ('address = "tcp://10.0.0.20:20007"\n', "password", "is required"),
    ('address = "tcp://10.0.0.20:20007"\npassword = "12345"\n', "password", "six digits"),
    ('address = "tcp://10.0.0.20:20007"\npassword = 123456\n', "password", "expected str"),
    ('address = "tcp://10.0.0.20:20007"\npassword = "000000"\nport = "/dev/x"\n', "port",
     "unknown key"),
    ('address = "tcp://10.0.0.20:20007"\npassword = "000000"\nmax_sends = 0\n', "max_sends",
     "1..10"),
])
def test_bad_options_name_the_key_and_the_file(tmp_path: Path, body: str, key: str,
                                                words: str) -> None:
    path = lane(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert str(path) in message
    assert f"terminals[0].{key}:" in message
    assert words in message


def test_a_currency_without_a_numeric_code_is_refused(tmp_path: Path) -> None:
    path = lane(tmp_path, 'address = "tcp://10.0.0.20:20007"\npassword = "000000"\n',
                store='[store]\ncurrency = "ISK"\n\n')
    with pytest.raises(ConfigError, match="zvt lane cannot take the store currency ISK"):
        load(path)


def test_every_setting_is_documented_in_the_example() -> None:
    text = (ROOT / "config.example.toml").read_text()
    for f in fields(ZvtSettings):
        if f.name != "currency":
            assert f"# {f.name} = " in text, f.name
