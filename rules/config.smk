# The config, read, validated and cross-checked when the workflow loads, before any job: a bad
# key is one line naming it and its allowed values (`config error: <key>: ...`), exit 2.
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate


def yaml_values(value):
    """A nested --config value as a config file would give it: Snakemake passes the leaves of
    `--config 'recipe={epochs: 3}'` as strings ('3', which the schema refuses)."""
    if isinstance(value, dict):
        return {key: yaml_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [yaml_values(item) for item in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return value if parsed is None or isinstance(parsed, (dict, list)) else parsed
    return value


def config_error(key, problem, hint):
    """Stop the workflow: one line naming the key, what is wrong and what it may be; exit 2."""
    print(f"config error: {key}: {problem} ({hint})", file=sys.stderr)
    sys.exit(2)


def schema_allows(schema):
    """What a schema node accepts, in words: 'an integer >= 1', '2d, 3d', 'true or false'."""
    if "enum" in schema:
        return ", ".join(str(value) for value in schema["enum"])
    if "const" in schema:
        return str(schema["const"])
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    words = {"integer": "an integer", "number": "a number", "string": "a string"}
    words |= {"boolean": "true or false", "array": "a list", "object": "a mapping"}
    bounds = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
    parts = [
        " or ".join(words.get(kind, kind) for kind in kinds),
        " and ".join(f"{sign} {schema[key]}" for key, sign in bounds if key in schema),
        (
            f"of {schema['maxItems']}"
            if schema.get("minItems", -1) == schema.get("maxItems")
            else ""
        ),
        f"a multiple of {schema['multipleOf']}" if "multipleOf" in schema else "",
        f"matching {schema['pattern']}" if "pattern" in schema else "",
    ]
    return " ".join(part for part in parts if part) or "see schemas/config.schema.yaml"


def schema_error(error):
    """A jsonschema ValidationError as (key, problem, hint), for `config_error`."""
    path = [str(part) for part in error.absolute_path]
    schema, instance = error.schema, error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = schema.get("properties", {})
        extra = sorted(set(instance) - set(known))[0]
        return ".".join([*path, extra]), "unknown key", "allowed: " + ", ".join(known)
    if error.validator == "required" and isinstance(instance, dict):
        missing = [key for key in schema["required"] if key not in instance][0]
        return (
            ".".join([*path, missing]),
            "missing",
            "required: " + ", ".join(schema["required"]),
        )
    if error.validator == "oneOf" and all("required" in s for s in schema["oneOf"]):
        sources = " or ".join(key for s in schema["oneOf"] for key in s["required"])
        return ".".join(path), "give exactly one source", f"allowed: {sources}"
    problem = (
        f"{instance!r} is not allowed" if error.validator == "enum" else error.message
    )
    return (
        ".".join(path) or "(top level)",
        problem[:200],
        f"allowed: {schema_allows(schema)}",
    )


def check_config():
    """Validate `config` (Snakemake's validate: the schema's defaults filled in) and check the
    names one key gives another; any error is one line (`config_error`)."""
    for key, value in getattr(workflow.config_settings, "config", {}).items():
        if isinstance(value, (dict, list)):  # given with --config: read as YAML
            update_config(config, {key: yaml_values(value)})
    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as err:
        if err.__context__ is None or not hasattr(err.__context__, "absolute_path"):
            raise
        config_error(*schema_error(err.__context__))
    names = ", ".join(config["checkpoints"])
    for section, field in (("models", "pretrained"), ("released", "checkpoint")):
        for row, spec in config.get(section, {}).items():
            if spec[field] not in config["checkpoints"]:
                problem = f"{spec[field]!r} is not a checkpoint"
                config_error(f"{section}.{row}.{field}", problem, f"allowed: {names}")


check_config()
