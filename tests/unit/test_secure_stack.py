"""The secured broker's configuration and ACL plan (logic; the broker itself is in tests/integration)."""

from __future__ import annotations

import re

from streamquant.secure_stack import PRINCIPALS, SECURE_SERVER_PROPERTIES, acl_plan, scram_arguments
from streams.topics import CatalogOptions, TopicCatalog


def plan(prefix: str = "") -> list:  # type: ignore[type-arg]
    return acl_plan(TopicCatalog(CatalogOptions(prefix=prefix)), features_group="streamquant-features",
                    predictions_group="streamquant-predictions", jobs_app_id="streamquant-jobs", topic_prefix=prefix)


def test_the_feature_processor_may_read_ticks_and_write_its_outputs_and_nothing_more() -> None:
    topics = {(g.operation, g.name) for g in plan("p.") if g.principal == "features" and g.resource == "topic"}
    assert topics == {("read", "p.ticks"), ("read", "p.features.changelog"), ("write", "p.bars"),
                      ("write", "p.features"), ("write", "p.ticks.dlq"), ("write", "p.ticks.late"),
                      ("write", "p.features.changelog")}
    others = {(g.resource, g.name, g.pattern, g.operation) for g in plan("p.")
              if g.principal == "features" and g.resource != "topic"}
    assert others == {("group", "streamquant-features", "literal", "read"),
                      ("group", "streamquant-restore-", "prefixed", "read"),
                      ("transactional_id", "streamquant-features-", "prefixed", "write")}


def test_no_service_principal_may_create_or_write_the_input_it_consumes() -> None:
    grants = plan()
    assert not any(g.principal == "features" and g.name == "ticks" and g.operation == "write" for g in grants)
    assert not any(g.principal == "predictions" and g.name == "features" and g.operation == "write" for g in grants)
    creators = {g.principal for g in grants if g.operation == "create"}
    assert creators == {"jobs"}  # Faust creates its own internal topics, nobody else creates anything
    assert not any(g.principal == "admin" for g in grants)  # a super user needs none


def test_every_principal_gets_a_scram_credential_at_format_time() -> None:
    creds = {p: f"pw-{p}" for p in PRINCIPALS}
    args = scram_arguments(creds)
    assert args[0::2] == ["--add-scram"] * len(PRINCIPALS)
    assert args[1::2] == [f"SCRAM-SHA-512=[name={p},password=pw-{p}]" for p in PRINCIPALS]


def test_the_server_properties_leave_no_placeholder_and_deny_by_default() -> None:
    text = SECURE_SERVER_PROPERTIES.format(kafka_port=9094, controller_port=9095, admin_password="x",
                                           keystore="/k", truststore="/t", store_password="s", data_dir="/d")
    assert not re.search(r"\{\w+\}", text)
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert "PLAINTEXT" not in props["listeners"]
