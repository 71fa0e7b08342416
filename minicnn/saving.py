"""The model file format: one ``.npz`` holding a JSON header and plain arrays, never a pickle.

``model.save`` / ``save_weights`` write it and ``load_model`` / ``load_weights`` read it.
The header ``__minicnn__.json`` is UTF-8 JSON stored as a uint8 array: the architecture,
the input shape, the compile settings, the optimizer's iteration count and the random
generators' states. The arrays are ``weights/<layer>/<param>`` (``weights/<model>/<layer>/
<param>`` inside a nested model) and ``optimizer/<layer>/<param>/<slot>``. Reading uses
``np.load(allow_pickle=False)`` after checking the file is a zip archive at all.

The architecture:

- a Sequential: ``{"name", "layers": [{"class_name", "config"}, ...]}`` (the layers in
  order; an ``Input`` given first is the ``"input"`` entry);
- a graph (Functional) model: ``{"name", "layers": [{"class_name", "config", "name",
  "inbound_nodes": [[[layer, node, tensor], ...], ...]}], "input_layers": [[layer, node,
  tensor], ...], "output_layers": [...]}``, Keras's own layout: each layer lists the
  calls made of it, each call the tensors it read.

Loading looks a ``class_name`` up in minicnn's own table of layers, then in
``custom_objects`` and in the classes registered with :func:`register_keras_serializable`;
it never imports a module or calls anything a file names.
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

FORMAT = "minicnn-model"
FORMAT_VERSION = 1


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- custom objects
_REGISTERED: dict[str, type] = {}


def register_keras_serializable(package="Custom", name=None):
    """Class decorator: make a custom layer loadable by name, as Keras's decorator does.

    ::

        @minicnn.saving.register_keras_serializable(package="my_layers")
        class Scale(minicnn.layers.Layer): ...

    registers the class as ``"my_layers>Scale"`` (and answers to ``"Scale"`` too), so
    ``load_model`` rebuilds it without ``custom_objects``.
    """
    def decorate(cls):
        key = f"{package}>{name or cls.__name__}"
        _REGISTERED[key] = cls
        cls._registered_name = key
        return cls
    return decorate


def get_registered_name(cls) -> str:
    return getattr(cls, "_registered_name", cls.__name__)


def get_registered_object(name, custom_objects=None):
    """The class a file calls ``name``: minicnn's own, then ``custom_objects``, then the
    registered classes; ``None`` when none of them has it."""
    from .layers import LAYER_CLASSES
    from .models import MODEL_CLASSES
    if custom_objects and name in custom_objects:
        return custom_objects[name]
    for table in (LAYER_CLASSES, MODEL_CLASSES, _REGISTERED):
        if name in table:
            return table[name]
    short = [cls for key, cls in _REGISTERED.items() if key.split(">", 1)[-1] == name]
    return short[0] if len(short) == 1 else None


def _class_for(name, custom_objects):
    from .layers import LAYER_CLASSES
    if not isinstance(name, str):
        raise ValueError(f"a layer's class_name must be a string, received {name!r}")
    cls = get_registered_object(name, custom_objects)
    if cls is None:
        raise ValueError(f"unknown layer class {name!r}; known layers: "
                         f"{', '.join(sorted(LAYER_CLASSES))}; for your own layers pass "
                         f"custom_objects={{{name!r}: {name.split('>')[-1]}}} or register the "
                         f"class with minicnn.saving.register_keras_serializable()")
    return cls


_TUPLE_KEYS = ("kernel_size", "strides", "pool_size", "input_shape", "height_factor",
               "width_factor", "shape", "padding")


def layer_from_config(entry, custom_objects=None):
    """A new layer from ``{"class_name": ..., "config": {...}}`` (a model for a model)."""
    from .models import Model
    cls = _class_for(entry.get("class_name"), custom_objects)
    cfg = entry.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"layer {entry.get('class_name')!r}: config must be an object")
    if isinstance(cls, type) and issubclass(cls, Model):
        return model_from_config(entry, custom_objects)
    cfg = dict(cfg)
    for key in _TUPLE_KEYS:
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    try:
        return cls.from_config(cfg)
    except TypeError as exc:
        raise ValueError(f"layer {entry.get('class_name')!r} cannot be made from its config: "
                         f"{exc}") from None


# ----------------------------------------------------------------------------- architectures
def _layer_entry(layer):
    return {"class_name": get_registered_name(type(layer)), "config": layer.get_config()}


def sequential_config(model):
    cfg = {"name": model.name, "layers": [_layer_entry(layer) for layer in model.layers]}
    if model.built:
        cfg["input_shape"] = list(model.input_shape)
    return cfg


def model_config(model):
    """The graph of a Functional model in Keras's layout (see the module docstring)."""
    def ref(t):
        return [t.node.layer.name, model.node_index(t.node), t.index]
    entries = []
    nodes = [t.node for t in model.inputs] + model.nodes
    for layer in model.layers:
        entry = _layer_entry(layer)
        entry["name"] = layer.name
        entry["inbound_nodes"] = [[ref(t) for t in n.inputs] for n in nodes
                                  if n.layer is layer and not n.is_input]
        entries.append(entry)
    return {"name": model.name, "layers": entries,
            "input_layers": [ref(t) for t in model.inputs],
            "output_layers": [ref(t) for t in model.outputs],
            "single_input": model.input is model.inputs[0],
            "single_output": model.output is model.outputs[0]}


def model_from_config(entry, custom_objects=None):
    """A new model from ``{"class_name": "Sequential"|"Functional", "config": {...}}``."""
    from .layers.input_layer import InputLayer
    from .models import Model, Sequential
    name, cfg = entry.get("class_name"), entry.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"model {name!r}: config must be an object")
    if name == "Sequential":
        model = Sequential(name=cfg.get("name"))
        for layer_entry in cfg["layers"]:
            model.add(layer_from_config(layer_entry, custom_objects))
        if cfg.get("input_shape") is not None and not model.built:
            model.build(tuple(cfg["input_shape"]))
        return model
    if name not in ("Functional", "Model"):
        raise ValueError(f"unknown model class {name!r}")
    made, outputs = {}, {}          # layer name -> layer; (layer, node) -> output tensors
    for layer_entry in cfg["layers"]:
        lname = layer_entry["name"]
        if layer_entry.get("class_name") == "InputLayer":
            layer = InputLayer(**{k: (tuple(v) if k == "shape" else v)
                                  for k, v in layer_entry["config"].items()})
            outputs[(lname, 0)] = [layer.output]
        else:
            layer = layer_from_config(layer_entry, custom_objects)
        if layer.name != lname:
            raise ValueError(f"layer {lname!r}: its config names it {layer.name!r}")
        made[lname] = layer
    pending = [(e["name"], i, node) for e in cfg["layers"] if e.get("class_name") != "InputLayer"
               for i, node in enumerate(e.get("inbound_nodes", []))]
    while pending:                      # call each layer once its inputs exist
        progress, rest = False, []
        for lname, i, refs in pending:
            keys = [(r[0], r[1]) for r in refs]
            if all(k in outputs for k in keys):
                tensors = [outputs[(r[0], r[1])][r[2]] for r in refs]
                layer = made[lname]
                multi = isinstance(layer.input_shape, list) if layer.built else len(tensors) > 1
                out = layer(tensors if multi else tensors[0])
                outputs[(lname, i)] = out if isinstance(out, list) else [out]
                progress = True
            else:
                rest.append((lname, i, refs))
        if not progress:
            raise ValueError(f"the graph's nodes cannot be connected: layer {rest[0][0]!r} "
                             f"reads tensors that no layer makes")
        pending = rest

    def tensors(refs):
        return [outputs[(r[0], r[1])][r[2]] for r in refs]
    ins, outs = tensors(cfg["input_layers"]), tensors(cfg["output_layers"])
    return Model(ins[0] if cfg.get("single_input", len(ins) == 1) else ins,
                 outs[0] if cfg.get("single_output", len(outs) == 1) else outs,
                 name=cfg.get("name"))


def model_class_name(model):
    from .models import Sequential
    return "Sequential" if isinstance(model, Sequential) else "Functional"


def jsonable_rng(rng):
    if rng is None:
        return None
    state = rng.bit_generator.state
    return json.loads(json.dumps(state, default=int))


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def rng_from_json(state):
    name = state["bit_generator"]
    if name not in _BIT_GENERATORS:       # never call whatever a file names
        raise ValueError(f"unknown bit generator {name!r}")
    bitgen = getattr(np.random, name)()
    bitgen.state = state
    return np.random.Generator(bitgen)


def _json_default(value):
    """NumPy scalars in layer configs (``Dropout(np.float32(0.5))``) as plain numbers."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot save {value!r} ({type(value).__name__}) in a model file")


def write_file(path, meta, arrays):
    path = os.fspath(path)
    buf = io.BytesIO()
    text = json.dumps(meta, default=_json_default)
    payload = {"__minicnn__.json": np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    payload.update({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    np.savez(buf, **payload)
    write_atomically(path, buf.getvalue())


def write_atomically(path, data):
    """Write the bytes ``data`` to ``path`` through a temporary file and a rename, so that a
    crash never leaves a half-written model file behind."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_file(path, what):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file {path!r}")
    not_ours = (f"{what}: {path!r} is not a minicnn model file "
                f"(written by Sequential.save or save_weights)")
    if not zipfile.is_zipfile(path):    # a .npy, a pickle, random bytes: never handed to np.load
        raise ValueError(f"{not_ours}: not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__minicnn__.json" not in data.files:
                raise ValueError("no minicnn header")
            meta = json.loads(data["__minicnn__.json"].tobytes().decode("utf-8"))
            # object arrays raise here: allow_pickle=False refuses to unpickle them
            arrays = {k: data[k] for k in data.files if k != "__minicnn__.json"}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, UnicodeDecodeError,
            RuntimeError) as exc:
        raise ValueError(f"{not_ours}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{what}: {path!r} is not a minicnn model file (wrong header)")
    if not _is_int(meta.get("version", 0)) or meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{what}: {path!r} was written by a newer minicnn "
                         f"(format version {meta.get('version')})")
    return meta, arrays


# ----------------------------------------------------------------------------- models
def _random_layers(model):
    return [layer for layer in model.walk_layers() if getattr(layer, "generator", None)
            is not None]


def _file_kind(path, what, saving=True):
    """'keras' (.keras), 'keras_weights' (.weights.h5) or 'minicnn' (.npz or no extension;
    when reading, any other name too: the minicnn reader checks the content)."""
    low = path.lower()
    if low.endswith(".keras"):
        return "keras"
    if low.endswith(".weights.h5"):
        return "keras_weights"
    ext = os.path.splitext(low)[1]
    if ext in ("", ".npz") or not saving:
        return "minicnn"
    raise ValueError(f"{what}: cannot use {path!r}: the extension {ext!r} is neither '.keras' "
                     f"(Keras 3's format; '.weights.h5' for weights) nor '.npz' (minicnn's own "
                     f"format); legacy Keras 2 '.h5' files are not supported")


def save_model(model, path, weights_only=False):
    """Write ``model`` (see :meth:`minicnn.Model.save`) to ``path``: Keras 3's format for
    ``.keras`` / ``.weights.h5``, minicnn's ``.npz`` format otherwise."""
    from . import config
    path = os.fspath(path)
    kind = _file_kind(path, "save_weights" if weights_only else "save")
    if kind != "minicnn":
        from . import keras_format
        if (kind == "keras_weights") != bool(weights_only):
            raise ValueError(f"{'save_weights' if weights_only else 'save'}: {path!r}: use "
                             f"save() for '.keras' files and save_weights() for '.weights.h5'")
        return (keras_format.save_keras_weights if weights_only
                else keras_format.save_keras_model)(model, path)
    meta = {"format": FORMAT, "version": FORMAT_VERSION,
            "model_class": model_class_name(model), "model": model.get_config(),
            "input_shape": (list(model.input_shape) if not isinstance(model.input_shape, list)
                            else [list(s) for s in model.input_shape])}
    arrays = {f"weights/{path_}": owner.params[key]
              for path_, owner, key in model.weight_slots()}
    if weights_only:
        meta["weights_only"] = True
    else:
        meta["rng_state"] = jsonable_rng(config.get_rng())
        meta["layer_rng_states"] = {layer.name: jsonable_rng(layer.generator)
                                    for layer in _random_layers(model)}
        if model.compiled:
            meta["compile"] = {"optimizer": model.optimizer.get_config(),
                               "loss": model.loss.get_config(), "metrics": model.metrics}
            iterations, state = model.optimizer.get_state()
            meta["optimizer_iterations"] = iterations
            arrays.update({f"optimizer/{k}": v for k, v in state.items()})
    write_file(path, meta, arrays)


def _architecture(meta, custom_objects):
    # minicnn 0.1 wrote Sequential models only, without "model_class"
    model = model_from_config({"class_name": meta.get("model_class", "Sequential"),
                               "config": meta["model"]}, custom_objects)
    if not model.built:
        model.build(tuple(meta["input_shape"]))
    return model


def load_model(path, custom_objects=None, compile=True, restore_rng=False):
    """Load a model written by ``model.save`` (never unpickles nor imports anything).

    The file is read with ``np.load(allow_pickle=False)``; anything that is not a
    minicnn model file (another ``.npz``, a pickle, random bytes, a truncated file)
    raises ValueError. A model saved after ``compile`` comes back compiled with its
    optimizer state (moments and iteration count), so training continues exactly:
    the next steps on the same batches give the same weights as without the round trip.

    ``custom_objects``: ``{"ClassName": cls}`` for layers of your own (or register them
    with :func:`register_keras_serializable`); an unknown class raises ValueError naming
    it. With ``restore_rng=True`` minicnn's global generator is put back in the state
    it had at saving time, so shuffling and dropout continue exactly (used by
    ``minicnn train --resume``).
    """
    from . import config, losses, optimizers
    path = os.fspath(path)
    kind = _file_kind(path, "load_model", saving=False)
    if kind == "keras":
        from . import keras_format
        return keras_format.load_keras_model(path, compile=compile)
    if kind == "keras_weights":
        raise ValueError(f"load_model: {path!r} holds weights only; build the model and call "
                         f"model.load_weights({path!r})")
    meta, arrays = read_file(path, "load_model")
    if meta.get("weights_only"):
        raise ValueError(f"load_model: {path!r} holds weights only (written by save_weights); "
                         f"build the model and call model.load_weights({path!r})")
    try:
        model = _architecture(meta, custom_objects)
        for path_, owner, key in model.weight_slots():
            p = owner.params[key]
            got = arrays.get(f"weights/{path_}")
            if got is None or got.shape != p.shape or got.dtype.kind not in "fiu":
                desc = "nothing" if got is None else f"shape {got.shape} dtype {got.dtype}"
                raise ValueError(f"weight {path_!r} should have shape {p.shape}, the file has "
                                 f"{desc}")
            p[...] = got
        states = meta.get("layer_rng_states", {})
        for layer in model.walk_layers():
            if states.get(layer.name) is not None and hasattr(layer, "generator"):
                layer.generator = rng_from_json(states[layer.name])
        if "compile" in meta and compile:
            comp = meta["compile"]
            model.compile(optimizers.from_config(comp["optimizer"]),
                          losses.from_config(comp["loss"]), comp.get("metrics") or None)
            state = {k[len("optimizer/"):]: v for k, v in arrays.items()
                     if k.startswith("optimizer/")}
            if any(v.dtype.kind != "f" for v in state.values()):
                raise ValueError("optimizer state arrays must be floating point")
            model.optimizer.set_state(meta.get("optimizer_iterations", 0), state)
        rng = (rng_from_json(meta["rng_state"])
               if restore_rng and meta.get("rng_state") else None)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise ValueError(f"load_model: {path!r} has an invalid model description: {exc}") from None
    if rng is not None:
        config.set_rng(rng)
    return model


def load_weights(model, path):
    """Load weights saved by ``save`` or ``save_weights`` into ``model`` (see
    :meth:`minicnn.Model.load_weights`)."""
    path = os.fspath(path)
    if _file_kind(path, "load_weights", saving=False) != "minicnn":
        from . import keras_format
        return keras_format.load_keras_weights(model, path)
    meta, arrays = read_file(path, "load_weights")
    if not model.built:
        try:
            model.build(tuple(meta["input_shape"]))
        except (KeyError, TypeError):
            raise ValueError(f"load_weights: {path!r} does not record an input shape; "
                             f"build the model first") from None
    saved = []          # [(owner path, {param: array})] in file order
    for k, v in arrays.items():
        if not k.startswith("weights/"):
            continue
        owner, key = k[len("weights/"):].rsplit("/", 1)
        if not saved or saved[-1][0] != owner:
            saved.append((owner, {}))
        saved[-1][1][key] = v
    mine = []           # [(owner path, layer, [keys])] in the model's order
    for path_, owner, key in model.weight_slots():
        prefix = path_.rsplit("/", 1)[0]
        if not mine or mine[-1][1] is not owner:
            mine.append((prefix, owner, []))
        mine[-1][2].append(key)
    if len(saved) != len(mine):
        raise ValueError(f"load_weights: {path!r} holds weights for {len(saved)} layers "
                         f"({', '.join(n for n, _ in saved)}), the model has {len(mine)} "
                         f"layers with weights ({', '.join(p for p, _, _ in mine)})")
    for (prefix, layer, keys), (sname, params) in zip(mine, saved):
        for key in keys:
            p = layer.params[key]
            if key not in params:
                raise ValueError(f"load_weights: layer {layer.name!r} needs {key!r}, "
                                 f"missing in {path!r} (saved layer {sname!r})")
            if params[key].shape != p.shape:
                raise ValueError(f"load_weights: layer {layer.name!r} {key} has shape "
                                 f"{p.shape}, the file's layer {sname!r} has shape "
                                 f"{params[key].shape}")
    for (_, layer, keys), (_, params) in zip(mine, saved):
        for key in keys:
            layer.params[key][...] = params[key]
