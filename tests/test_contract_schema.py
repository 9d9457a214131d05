"""``schema.yaml`` restates ``contract.json`` for people and review tools: its newest version must say
exactly what the contract says, so the two cannot drift apart."""

from __future__ import annotations

import json

import yaml

from hpcm.plugins.biwkv.contract import CONTRACT_PATH

SCHEMA_PATH = CONTRACT_PATH.with_name("schema.yaml")


def _words(text: str) -> str:
    return " ".join(text.split())


def test_schema_restates_the_contract():
    contract = json.loads(CONTRACT_PATH.read_text())
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert schema["name"] == contract["op_type"]
    newest = max(schema["versions"], key=lambda v: int(v["plugin_version"]))
    assert newest["plugin_version"] == contract["plugin_version"]
    assert newest["plugin_namespace"] == contract["plugin_namespace"]
    assert newest["onnx"] == {"domain": contract["domain"], "op_type": contract["op_type"],
                              "opset_version": contract["opset_version"]}
    assert newest["torch_op"] == contract["torch_op"] and newest["layout"] == contract["layout"]
    assert newest["earlier_plugin_versions"] == contract["earlier_plugin_versions"]
    assert [(m["name"], _words(m["formula"])) for m in newest["modes"]] == \
        [(m["name"], _words(m["formula"])) for m in contract["modes"]]
    for kind in ("inputs", "outputs"):
        assert [(t["name"], t["shape"], t["dtypes"], _words(t["doc"])) for t in newest[kind]] == \
            [(t["name"], t["shape"], t["dtypes"], _words(t["doc"])) for t in contract[kind]], kind
    assert [(a["name"], a["type"], a.get("default")) for a in newest["attributes"]] == \
        [(a["name"], a["type"], a.get("default")) for a in contract["attributes"]]


def test_schema_keeps_every_version_whose_nodes_still_run():
    contract = json.loads(CONTRACT_PATH.read_text())
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    versions = {v["plugin_version"] for v in schema["versions"]}
    assert versions == {contract["plugin_version"], *contract["earlier_plugin_versions"]}
