"""What the deployment files may refer to, read from the code itself, and readers for those files.

The files under deploy/ and docs/deploy.md name commands, options, settings, ports, routes, metrics and paths.
Each of those is checked against the project: the typer apps' click trees (commands and options), the Settings
classes (environment variable names), the FastAPI app (routes) and the prometheus_client registries (metrics).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import typer.main
import yaml
from pydantic_settings import BaseSettings

from agent.config import AgentSettings
from planner.core.config import Settings
from scheduler.config import SchedulerSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
KUBERNETES_DIR = DEPLOY / "kubernetes"
SYSTEMD_DIR = DEPLOY / "systemd"
DASHBOARD = DEPLOY / "grafana" / "gpu-fleet.json"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

S = TypeVar("S", bound=BaseSettings)

PROGRAMS = ("planner", "agent", "scheduler")
SETTINGS: dict[str, type[BaseSettings]] = {
    "PLANNER_": Settings,
    "AGENT_": AgentSettings,
    "SCHEDULER_": SchedulerSettings,
}
ENV_NAME = re.compile(r"\b(PLANNER|AGENT|SCHEDULER)_[A-Z0-9_]*[A-Z0-9]\b")
SHELLS = ("sh", "bash", "/bin/sh", "/bin/bash")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ";;", "(", ")", ">", ">>", "<", "<<", "2>", "&>"}
COMMAND_PREFIXES = {"exec", "do", "then", "else", "time", "nohup", "sudo", "!"}


# -- the programs' command trees ---------------------------------------------------------------------------------
@cache
def command_tree(program: str) -> Any:
    """The click command of a console script (pyproject's [project.scripts]), built from its typer app.

    Typer vendors its own click (typer._click), whose groups are not `click.Group`s: the tree is walked by duck
    typing (a group has `commands`, an option `opts`).
    """
    if program == "planner":
        from planner.cli.main import app
    elif program == "agent":
        from agent.cli import app
    else:
        from scheduler.cli import app
    return typer.main.get_command(app)


@dataclass(frozen=True)
class Invocation:
    """`planner db upgrade --seed` as found in a file: the program and the words after it."""

    program: str
    args: tuple[str, ...]
    where: str

    def __str__(self) -> str:
        return f"{self.where}: {' '.join((self.program, *self.args))}"


def check_invocation(inv: Invocation) -> list[str]:
    """What is wrong with an invocation: an unknown subcommand or option ([] when it is a real command line)."""
    cmd = command_tree(inv.program)
    path = [inv.program]
    args = list(inv.args)
    problems: list[str] = []
    while isinstance(getattr(cmd, "commands", None), dict):
        while args and args[0].startswith("-"):  # a group's own options (--version, --help)
            name = args.pop(0).split("=", 1)[0]
            if name not in _option_names(cmd):
                problems.append(f"{inv}: `{' '.join(path)}` has no option {name}")
        if not args:
            return problems
        sub = args.pop(0)
        if sub not in cmd.commands:
            return [*problems, f"{inv}: `{' '.join(path)}` has no command {sub!r} (it has {sorted(cmd.commands)})"]
        cmd = cmd.commands[sub]
        path.append(sub)
    takes_value = _value_options(cmd)
    known = _option_names(cmd)
    while args:
        word = args.pop(0)
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            continue  # an argument
        name, _, inline = word.partition("=")
        if name not in known:
            problems.append(f"{inv}: `{' '.join(path)}` has no option {name} (it has {sorted(known)})")
        elif name in takes_value and not inline and args:
            args.pop(0)
    return problems


def _options(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "option"]


def _option_names(cmd: Any) -> set[str]:
    names = {"--help"}
    for option in _options(cmd):
        names.update(option.opts)
        names.update(option.secondary_opts)
    return names


def _value_options(cmd: Any) -> set[str]:
    return {name for option in _options(cmd) if not (option.is_flag or option.count) for name in option.opts}


def _program(word: str) -> str | None:
    """`planner`, `/opt/gpu-fleet/bin/planner`: the program a word runs, when it is one of ours."""
    if word in PROGRAMS:
        return word
    if word.startswith("/") and word.rsplit("/", 1)[-1] in PROGRAMS:
        return word.rsplit("/", 1)[-1]
    return None


def invocations_in_argv(argv: list[str], where: str) -> list[Invocation]:
    """Invocations in an exec-form command (a container's command + args, a compose list)."""
    if not argv:
        return []
    if argv[0] in SHELLS and len(argv) >= 3 and argv[1] == "-c":
        return invocations_in_shell(argv[2], where)
    program = _program(argv[0])
    return [Invocation(program, tuple(argv[1:]), where)] if program else []


def invocations_in_shell(script: str, where: str) -> list[Invocation]:
    """Invocations in shell text: each command of the script whose first word is one of the programs."""
    script = re.sub(r"\\\n", " ", script)
    found: list[Invocation] = []
    for line in script.splitlines():
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
        except ValueError:
            continue  # not shell (prose in a code span)
        commands: list[list[str]] = [[]]
        for word in words:
            if word in SHELL_OPERATORS or set(word) <= set("&|;<>()"):
                commands.append([])
            else:
                commands[-1].append(word)
        for command in commands:
            while command and (command[0] in COMMAND_PREFIXES or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0])):
                command = command[1:]  # `exec planner ...`, `FOO=1 planner ...`
            # `docker compose exec planner planner db upgrade`, `kubectl exec deploy/planner -- planner ...`
            for i, word in enumerate(command):
                program = _program(word)
                if program is None:
                    continue
                rest = command[i + 1 :]
                after = command[i - 1] if i else ""
                if i == 0 or word.startswith("/") or after in ("--", word) or _program(after) is not None:
                    if rest and _program(rest[0]) is None:
                        found.append(Invocation(program, tuple(rest), where))
                    break
    return found


# -- settings ----------------------------------------------------------------------------------------------------
def env_names_in(text: str) -> set[str]:
    return {m.group(0) for m in ENV_NAME.finditer(text)}


def unknown_env_names(names: Iterable[str]) -> list[str]:
    """Names with one of the prefixes that are not a field of the matching Settings class."""
    bad = []
    for name in sorted(set(names)):
        prefix = next(p for p in SETTINGS if name.startswith(p))
        if name[len(prefix) :].lower() not in SETTINGS[prefix].model_fields:
            bad.append(name)
    return bad


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with every PLANNER_/AGENT_/SCHEDULER_ variable replaced by `values`, restored after."""
    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.startswith(tuple(SETTINGS)):
                del os.environ[name]
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_settings(env: Mapping[str, str]) -> None:
    """Build each Settings class whose prefix appears in `env` from it: a bad value or combination raises."""
    for prefix, cls in SETTINGS.items():
        if any(name.startswith(prefix) for name in env):
            _build(cls, env)


def _build(cls: type[S], env: Mapping[str, str]) -> S:
    with environment(env):
        return cls(_env_file=None)  # pydantic-settings' init-only argument: no .env file


def planner_settings(env: Mapping[str, str]) -> Settings:
    return _build(Settings, env)


def scheduler_settings(env: Mapping[str, str]) -> SchedulerSettings:
    return _build(SchedulerSettings, env)


def agent_settings(env: Mapping[str, str]) -> AgentSettings:
    return _build(AgentSettings, env)


# -- files -------------------------------------------------------------------------------------------------------
def yaml_documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert all(isinstance(d, dict) for d in docs), path
    return docs


def kubernetes_files() -> list[Path]:
    return sorted(p for p in KUBERNETES_DIR.rglob("*.yaml"))


def kubernetes_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in kubernetes_files() for d in yaml_documents(p) if p.name != "kustomization.yaml"]


@dataclass
class PodTemplate:
    """A pod spec of a workload (Deployment, DaemonSet, Job), with where it came from."""

    path: Path
    kind: str
    name: str
    spec: dict[str, Any]
    labels: dict[str, str]

    def containers(self) -> list[dict[str, Any]]:
        return [*self.spec.get("initContainers", []), *self.spec.get("containers", [])]


def pod_templates() -> list[PodTemplate]:
    found = []
    for path, obj in kubernetes_objects():
        if obj["kind"] in ("Deployment", "DaemonSet", "Job", "StatefulSet"):
            template = obj["spec"]["template"]
            found.append(
                PodTemplate(
                    path, obj["kind"], obj["metadata"]["name"], template["spec"], template["metadata"].get("labels", {})
                )
            )
    return found


@dataclass
class Unit:
    """A systemd unit file: section -> key -> every value given (EnvironmentFile= may repeat)."""

    path: Path
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def get(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])


def read_unit(path: Path) -> Unit:
    unit = Unit(path)
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a Key=Value line: {raw!r}"
        unit.sections.setdefault(section, {}).setdefault(key.strip(), []).append(value.strip())
    return unit


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an environment file (systemd EnvironmentFile=, compose .env)."""
    values = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {raw!r}"
            values[key.strip()] = value.strip()
    return values


# -- compose -----------------------------------------------------------------------------------------------------
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


def interpolation_names(text: str) -> set[str]:
    names = set()
    for m in INTERPOLATION.finditer(text):
        if m.group("name"):
            names.add(m.group("name"))
        elif m.group("braced") is not None:
            braced = BRACED.match(m.group("braced"))
            assert braced, f"bad interpolation ${{{m.group('braced')}}}"
            names.add(braced.group("name"))
    return names


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (`${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `$$`) over a parsed file."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("name"):
            return variables.get(m.group("name"), "")
        braced = BRACED.match(m.group("braced"))
        assert braced, m.group(0)
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg") or ""
        current = variables.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else str(current)
        if op in (":?", "?"):
            if unset:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset else arg
        return current or ""

    return INTERPOLATION.sub(one, value)


def compose_raw() -> dict[str, Any]:
    docs = yaml_documents(COMPOSE_FILE)
    assert len(docs) == 1
    return docs[0]


def compose(variables: Mapping[str, str]) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with these variables (.env)."""
    result: dict[str, Any] = interpolate(compose_raw(), variables)
    return result


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def service_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return [str(c) for c in command] if isinstance(command, list) else shlex.split(str(command))


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service.get("healthcheck", {}).get("test")
    if test is None:
        return []
    if isinstance(test, str):
        return ["sh", "-c", test]
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1]]
    assert test[0] == "CMD", test
    return [str(t) for t in test[1:]]


# -- the app and the metrics -------------------------------------------------------------------------------------
URL = re.compile(r"https?://(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)(?P<path>/[^\s'\"),]*)?")


def urls_in(text: str) -> list[tuple[str, int, str]]:
    return [(m.group("host"), int(m.group("port")), m.group("path") or "/") for m in URL.finditer(text)]
