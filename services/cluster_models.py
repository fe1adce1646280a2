"""Inputs of the cluster planner from disk or the Hub: cluster profiles (profiles/clusters/*.yaml,
safe YAML with extra keys refused) and a model's config.json (a local file or folder, or a Hub repo
read before any download)."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from core.cluster_plan import ClusterProfile
from core.hf_model_shape import ConfigError
from core.options import describe_validation_error
from services.paths import project_root
from services.yaml_files import DataFileError, load_data_file

CLUSTER_FOLDER = Path("profiles") / "clusters"
MAX_CONFIG_BYTES = 4 << 20


class ClusterInputError(ValueError):
    """A profile or model that cannot be planned; the message says why."""


def cluster_names() -> list[str]:
    return sorted(p.stem for p in (project_root() / CLUSTER_FOLDER).glob("*.yaml"))


def load_cluster(name_or_path: str) -> ClusterProfile:
    """A profile by name (profiles/clusters/NAME.yaml) or by path to a YAML/JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        if name_or_path not in cluster_names():
            raise ClusterInputError(f"no cluster profile {name_or_path!r} (there are: {', '.join(cluster_names())})")
        path = project_root() / CLUSTER_FOLDER / f"{name_or_path}.yaml"
    try:
        data = load_data_file(path)
        if not isinstance(data, dict):
            raise ClusterInputError(f"{path.name}: expected a mapping of fields")
        return ClusterProfile(**data)
    except DataFileError as exc:
        raise ClusterInputError(str(exc)) from None
    except ValidationError as exc:
        raise ClusterInputError(f"{path.name}: " + describe_validation_error(exc, "cluster profile")) from None
    except TypeError as exc:
        raise ClusterInputError(f"{path.name}: {exc}") from None


def read_config(model: str, hub=None) -> tuple[dict, str]:
    """config.json of ``model``: a local config.json or folder holding one, else a Hub repo id
    (only config.json is read). Returns (config, the name to show and serve)."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.name == "config.json" or path.suffix == ".json":
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ClusterInputError(f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ClusterInputError(f"{path}: {exc.strerror or exc}") from None
        except (ValueError, UnicodeDecodeError):
            raise ClusterInputError(f"{path} is not valid JSON") from None
        if not isinstance(data, dict):
            raise ConfigError("config.json is not a JSON object")
        return data, str(path.parent.name if path.name == "config.json" else path.stem)
    return read_hub_config(model, hub)


def read_hub_config(repo: str, hub=None) -> tuple[dict, str]:
    """config.json of a Hub repo (only that file is read); the name never becomes a local path."""
    from services.hub import HubClient, HubError

    model = repo
    client = hub or HubClient()
    try:
        listing = client.listing(model)
        config = next((f for f in listing.files if f.path == "config.json"), None)
        if config is None:
            raise ClusterInputError(f"{model} has no config.json: it is not a transformers model repo")
        return client.small_json(listing.repo, listing.revision, config), listing.repo
    except ClusterInputError:
        raise
    except (HubError, ValueError) as exc:  # ValueError: a name that is not owner/name
        raise ClusterInputError(str(exc)) from None
