"""The `streamquant` command line: wiring only. Settings are read here, once, and passed inward."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from processors.errors import ProcessorError
from schemas.errors import SchemaError
from streamquant.devstack import DevStack, DevStackError, ServiceState
from streamquant.errors import UserError
from streamquant.kafka_io import admin_client
from streamquant.secure_stack import SERVICE_PRINCIPALS, acl_plan, apply_acls
from streamquant.settings import Settings, SettingsError, load_settings
from streams.config import KafkaConfig
from streams.errors import StreamsError
from streams.topics import TopicCatalog, ensure_topics

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="StreamQuant: Kafka stream processing for quantitative trading.")
dev_app = typer.Typer(no_args_is_help=True, help="The local Kafka + Redis stack (no Docker needed).")
topics_app = typer.Typer(no_args_is_help=True, help="The topic catalog.")
app.add_typer(dev_app, name="dev")
app.add_typer(topics_app, name="topics")

console = Console()
err_console = Console(stderr=True)


def settings_of(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="TOML or YAML settings file")] = None,
) -> None:
    ctx.obj = load_settings(config)


# ---------------------------------------------------------------------- dev


@dev_app.command("up")
def dev_up(
    ctx: typer.Context,
    secure: Annotated[bool, typer.Option("--secure", help="also start a SASL_SSL broker with SCRAM users and ACLs "
                                         "(settings per principal in .devstack/secure/<principal>.env)")] = False,
) -> None:
    """Fetch Kafka (once), start the broker and Redis, wait until both answer, create the topics."""
    settings = settings_of(ctx)
    stack = DevStack(settings.dev, settings.redis, progress=lambda m: console.print(f"[dim]•[/] {m}"))
    stack.up()
    # The topics go to the broker just started (its port may not be the one STREAMQUANT_KAFKA_BOOTSTRAP names).
    _create_topics(settings, quiet_unchanged=True, kafka=KafkaConfig(bootstrap=stack.bootstrap,
                                                                      client_id=settings.kafka.client_id))
    if secure:
        stack.up_secure()
        admin_config = stack.secure_config("admin")
        _create_topics(settings, quiet_unchanged=True, kafka=admin_config)
        plan = acl_plan(TopicCatalog(settings.topics.catalog_options()), features_group=settings.features.group,
                        predictions_group=settings.predictions.group, jobs_app_id=settings.jobs.app_id,
                        topic_prefix=settings.topics.prefix)
        count = apply_acls(admin_client(admin_config), plan)
        console.print(f"[dim]•[/] kafka-secure: {count} ACLs for {', '.join(SERVICE_PRINCIPALS)}")
    _print_status(stack)


@dev_app.command("down")
def dev_down(ctx: typer.Context) -> None:
    """Stop the processes `dev up` started (and nothing else)."""
    settings = settings_of(ctx)
    stack = DevStack(settings.dev, settings.redis, progress=lambda m: console.print(f"[dim]•[/] {m}"))
    stopped = stack.down()
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing (no process of ours was running)"))


@dev_app.command("status")
def dev_status(ctx: typer.Context) -> None:
    """Show whether the broker and Redis answer, and which processes the stack owns."""
    settings = settings_of(ctx)
    states = _print_status(DevStack(settings.dev, settings.redis))
    if not all(s.answering for s in states):
        raise typer.Exit(1)


def _print_status(stack: DevStack) -> list[ServiceState]:
    table = Table("service", "address", "state", "pid (ours)", "log")
    states = stack.status()
    for s in states:
        table.add_row(s.name, s.address, "[green]up[/]" if s.answering else "[red]down[/]",
                      str(s.pid) if s.pid else "-", str(s.log) if s.log else "-")
    console.print(table)
    return states


# ---------------------------------------------------------------------- topics


@topics_app.command("create")
def topics_create(ctx: typer.Context) -> None:
    """Create every catalog topic that is missing; report existing topics whose settings differ."""
    if not _create_topics(settings_of(ctx), quiet_unchanged=False):
        raise typer.Exit(1)


@topics_app.command("list")
def topics_list(ctx: typer.Context) -> None:
    """Show the catalog (and, when the broker answers, whether each topic exists)."""
    settings = settings_of(ctx)
    catalog = TopicCatalog(settings.topics.catalog_options())
    existing: set[str] | None = None
    try:
        existing = set(admin_client(settings.kafka, timeout_s=3).list_topics(timeout=5).topics)
    except StreamsError:
        err_console.print(f"[yellow]broker at {settings.kafka.bootstrap} not reachable: showing the catalog only[/]")
    table = Table("topic", "partitions", "record", "key", "cleanup", "exists", "about")
    for spec in catalog.specs():
        exists = "-" if existing is None else ("yes" if spec.name in existing else "[red]no[/]")
        table.add_row(spec.name, str(spec.partitions), spec.record, spec.key,
                      spec.config.get("cleanup.policy", "delete"), exists, spec.doc)
    console.print(table)


def _create_topics(settings: Settings, *, quiet_unchanged: bool, kafka: KafkaConfig | None = None) -> bool:
    catalog = TopicCatalog(settings.topics.catalog_options())
    admin = admin_client(kafka or settings.kafka)
    report = ensure_topics(admin, catalog.specs(), settings.topics.replication_factor)
    for name in report.created:
        console.print(f"[green]created[/] {name}")
    if not quiet_unchanged:
        for name in report.unchanged:
            console.print(f"[dim]exists[/]  {name}")
    for name, diffs in report.mismatched.items():
        err_console.print(f"[yellow]differs[/] {name}: {'; '.join(diffs)}")
    if quiet_unchanged and report.unchanged:
        console.print(f"[dim]{len(report.unchanged)} topics already as in the catalog[/]")
    return not report.mismatched


# ---------------------------------------------------------------------- entry point

from streamquant import cli_backtest, cli_jobs, cli_ml, cli_run, cli_stream  # noqa: E402  (register commands on `app`)

cli_stream.register(app)
cli_run.register(app)
cli_jobs.register(app, cli_run.run_app)
cli_ml.register(app, cli_run.run_app)
app.add_typer(cli_backtest.backtest_app, name="backtest")

USER_ERRORS = (UserError, SettingsError, DevStackError, StreamsError, SchemaError, ProcessorError)


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI; user errors print one line on stderr and exit 1 (usage errors exit 2)."""
    try:
        app(args=argv)  # standalone: click reports bad options and missing arguments itself
    except USER_ERRORS as err:
        _fail(str(err), 1)
    except KafkaException as err:
        _fail(f"Kafka: {err.args[0].str()}", 1)


def _fail(message: str, code: int) -> None:
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)
