"""Keras 3 files: ``.keras`` models and ``.weights.h5`` weights, read and written.

A ``.keras`` file is a zip archive of three members:

- ``config.json``: the model as Keras serializes it, ``{"module", "class_name", "config",
  "registered_name", "build_config", "compile_config"}``; a Functional model lists its
  layers with ``inbound_nodes`` of the form ``[{"args": [tensor or [tensors]], "kwargs":
  {}}]``, each tensor ``{"class_name": "__keras_tensor__", "config": {"shape", "dtype",
  "keras_history": [layer, node, tensor]}}``;
- ``metadata.json``: ``{"keras_version", "date_saved"}``;
- ``model.weights.h5``: HDF5 with ``layers/<key>/vars/0..n-1`` (a layer's variables in its
  creation order), ``optimizer/vars/0..`` (the iteration count, the learning rate, then
  each trainable variable's slots, e.g. Adam's m and v) and an empty top-level ``vars``.
  ``<key>`` is not the layer's name but its class in snake case made unique in model order
  (``conv2d``, ``conv2d_1``, ...); a Sequential's InputLayer has no key, a Functional's
  has one.

A ``.weights.h5`` file is that HDF5 file alone.

Reading never imports nor calls what a file names: classes are looked up in
:mod:`minicnn.keras_classes`, the archive's members are read in memory (never extracted),
and h5py reads plain numeric datasets only. h5py is imported only here, when needed.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import warnings
import zipfile
import zlib

import numpy as np

from . import keras_classes as kc
from . import saving

#: the Keras release whose file layout minicnn writes (and was checked against)
KERAS_FORMAT_VERSION = "3.15.1"
_MAX_JSON_BYTES = 64 << 20


def h5py():
    try:
        import h5py as module
    except ImportError:
        raise ImportError('Keras files (.keras, .weights.h5) need h5py: '
                          'pip install "minicnn[interop]"') from None
    return module


# ----------------------------------------------------------------------------- the archive
def _check_member_name(name, path):
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise ValueError(f"{path!r}: refusing archive member {name!r} (an absolute path or "
                         f"one leaving the archive)")


def read_archive(path, what):
    """``(config, weights h5 bytes)`` of the ``.keras`` file ``path``, read in memory."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file {path!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what}: {path!r} is not a .keras file: not a zip archive "
                         f"(truncated, or another format)")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {info.filename: info for info in zf.infolist()}
            for name in infos:
                _check_member_name(name, path)
            for name in ("config.json", "model.weights.h5"):
                if name not in infos:
                    raise ValueError(f"the archive has no {name} (members: "
                                     f"{', '.join(sorted(infos)) or 'none'})")
            if infos["config.json"].file_size > _MAX_JSON_BYTES:
                raise ValueError("config.json is implausibly large")
            cfg = json.loads(zf.read("config.json").decode("utf-8"))
            weights = zf.read("model.weights.h5")
    except ValueError as exc:
        raise ValueError(f"{what}: {path!r} is not a readable .keras file: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError) as exc:
        raise ValueError(f"{what}: {path!r} is not a readable .keras file (truncated or "
                         f"damaged?): {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{what}: {path!r}: config.json must hold an object")
    return cfg, weights


def _open_h5(data, path, what):
    try:
        return h5py().File(io.BytesIO(data) if isinstance(data, bytes) else data, "r")
    except OSError as exc:
        raise ValueError(f"{what}: {path!r}: the weights are not a readable HDF5 file "
                         f"(truncated or damaged?): {exc}") from None


# ----------------------------------------------------------------------------- Keras -> minicnn
def _input_shape(cfg, where):
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    if not isinstance(shape, list) or len(shape) < 2:
        raise ValueError(f"{where}: InputLayer needs a batch_shape, received {shape!r}")
    return shape


def _input_layer_config(cfg, where):
    shape = _input_shape(cfg, where)
    if cfg.get("sparse") or cfg.get("ragged"):
        raise ValueError(f"{where}: sparse and ragged inputs are not supported by minicnn")
    return {"shape": shape[1:], "batch_size": shape[0],
            "dtype": kc.dtype_name(cfg.get("dtype"), where), "name": cfg.get("name")}


def _history(tensor, where):
    if not (isinstance(tensor, dict) and tensor.get("class_name") == "__keras_tensor__"):
        raise ValueError(f"{where}: a layer's input must be a Keras tensor, received "
                         f"{str(tensor)[:80]}")
    ref = (tensor.get("config") or {}).get("keras_history")
    if not (isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], str)):
        raise ValueError(f"{where}: malformed keras_history {ref!r}")
    return ref


def _node_refs(node, where):
    """Keras 3's ``{"args": [...], "kwargs": {}}`` -> ``[[layer, node, tensor], ...]``."""
    if not isinstance(node, dict) or not isinstance(node.get("args"), list):
        raise ValueError(f"{where}: inbound node {str(node)[:80]} is not Keras 3's "
                         f"{{'args': [...], 'kwargs': {{}}}} form")
    # ``training`` (Keras writes it for Dropout and BatchNormalization calls) is the mode of
    # a pass, which minicnn's fit/predict set themselves
    extra = {k: v for k, v in (node.get("kwargs") or {}).items()
             if v is not None and k != "training"}
    if len(node["args"]) != 1 or extra:
        raise ValueError(f"{where}: minicnn calls a layer on one tensor or one list of "
                         f"tensors, received args {str(node['args'])[:80]} kwargs {extra}")
    arg = node["args"][0]
    return [_history(t, where) for t in (arg if isinstance(arg, list) else [arg])]


def _layer_entry(entry, where):
    """A Keras layer entry -> (Keras class name, minicnn saving entry)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise ValueError(f"{where}: a layer entry must be an object with a config")
    cls = kc.check_keras_object(entry, where)
    registered = entry.get("registered_name")
    if registered not in (None, cls):
        raise ValueError(f"{where}: custom layer {registered!r} is not supported by minicnn "
                         f"(Keras layers minicnn reads: {', '.join(kc.supported_layers())})")
    name = entry["config"].get("name")
    where = f"{where} layer {name!r}"
    if cls == "InputLayer":
        return cls, {"class_name": "InputLayer",
                     "config": _input_layer_config(entry["config"], where)}
    layer_cls, kwargs = kc.layer_kwargs(cls, entry["config"], where)
    if cls == "RandomTranslation" and entry["config"].get("interpolation") == "bilinear":
        warnings.warn(f"{where}: minicnn's RandomTranslation shifts by whole pixels "
                      f"(Keras's interpolation='nearest'); training augmentations will differ "
                      f"slightly from Keras's bilinear ones, predictions do not", stacklevel=4)
    return cls, {"class_name": layer_cls.__name__, "config": kwargs}


def _flat_or_nested(refs):
    """Keras writes one model input as ``[name, 0, 0]`` and several as a list of those."""
    if isinstance(refs, list) and len(refs) == 3 and isinstance(refs[0], str):
        return [refs], True
    return refs, len(refs) == 1


def model_from_keras_config(spec, where):
    """The minicnn model of a Keras model config, and ``[(h5 key, Keras class, layer name)]``,
    the layers in Keras's weight-file order."""
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise ValueError(f"{where}: config.json must describe a model")
    model_cls = kc.check_keras_object(spec, where)
    cfg = spec["config"]
    entries = cfg.get("layers")
    if not isinstance(entries, list):
        raise ValueError(f"{where}: the model config has no layer list")
    if model_cls == "Sequential":
        converted = [_layer_entry(e, where) for e in entries]
        input_shape = None
        if converted and converted[0][0] == "InputLayer":
            input_shape = converted.pop(0)[1]["config"]["shape"]
        if any(cls == "InputLayer" for cls, _ in converted):
            raise ValueError(f"{where}: an InputLayer can only come first in a Sequential")
        if input_shape is None:
            shape = (spec.get("build_config") or {}).get("input_shape") or \
                cfg.get("build_input_shape")
            input_shape = shape[1:] if isinstance(shape, list) else None
        mine = {"name": cfg.get("name"), "layers": [e for _, e in converted],
                "input_shape": input_shape}
        order_entries = converted
    elif model_cls in ("Functional", "Model"):
        layer_entries, order_entries = [], []
        for e in entries:
            cls, entry = _layer_entry(e, where)
            lname = entry["config"]["name"]
            if e.get("name", lname) != lname:
                raise ValueError(f"{where}: layer {e.get('name')!r}: its config names it "
                                 f"{lname!r}")
            entry["name"] = lname
            entry["inbound_nodes"] = [_node_refs(n, f"{where} layer {lname!r}")
                                      for n in e.get("inbound_nodes") or []]
            layer_entries.append(entry)
            order_entries.append((cls, entry))
        ins, single_in = _flat_or_nested(cfg.get("input_layers"))
        outs, single_out = _flat_or_nested(cfg.get("output_layers"))
        mine = {"name": cfg.get("name"), "layers": layer_entries, "input_layers": ins,
                "output_layers": outs, "single_input": single_in, "single_output": single_out}
    else:
        raise ValueError(f"{where}: Keras model class {model_cls!r} is not supported by minicnn "
                         f"(Sequential and Functional are)")
    try:
        model = saving.model_from_config({"class_name": "Sequential" if model_cls == "Sequential"
                                          else "Functional", "config": mine})
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{where}: invalid model description: {exc!r}") from None
    if not model.built:
        raise ValueError(f"{where}: the file records no input shape")
    names = [entry["config"]["name"] for _, entry in order_entries]
    return model, _with_keys(list(zip([cls for cls, _ in order_entries], names)))


def _with_keys(classes_and_names):
    """Keras's h5 keys: the class in snake case, made unique in order (``conv2d_1``)."""
    used, out = {}, []
    for cls, name in classes_and_names:
        key = kc.snake_case(cls)
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        out.append((key, cls, name))
    return out


def keras_order(model):
    """``[(h5 key, Keras class, layer name)]`` of a minicnn model, in Keras's order."""
    from .layers.input_layer import InputLayer
    from .models import Model
    pairs = []
    for layer in model.layers:
        if isinstance(layer, Model):
            raise ValueError(f"{layer.name}: nested models are not supported in Keras files "
                             f"by minicnn yet; save to .npz instead")
        pairs.append(("InputLayer" if isinstance(layer, InputLayer) else kc.keras_name_for(layer),
                      layer.name))
    return _with_keys(pairs)


def _read_layer_weights(model, order, h5, path, what):
    """Check then copy every layer's ``vars`` into ``model``; nothing changes on error."""
    pending = []
    for key, cls, name in order:
        if cls == "InputLayer":
            continue
        layer = model.get_layer(name)
        keys = kc.weight_keys(layer, cls)
        group = h5.get(f"layers/{key}/vars")
        stored = [] if group is None else sorted(group.keys(), key=lambda s: (len(s), s))
        if stored != [str(i) for i in range(len(keys))]:
            raise ValueError(f"{what}: {path!r}: layer {name!r} ({cls}) has {len(keys)} weight "
                             f"arrays ({', '.join(keys) or 'none'}), the file's layers/{key} "
                             f"has {len(stored)}")
        for i, k in enumerate(keys):
            ds = group[str(i)]
            target = layer.params[k]
            if not isinstance(ds, h5py().Dataset) or ds.dtype.kind not in "fiu" \
                    or ds.shape != target.shape:
                desc = f"shape {getattr(ds, 'shape', None)} dtype {getattr(ds, 'dtype', None)}"
                raise ValueError(f"{what}: {path!r}: layer {name!r} {k} should have shape "
                                 f"{target.shape}, the file has {desc}")
            pending.append((target, ds[()]))
    for target, value in pending:
        target[...] = value


def _trainable_in_keras_order(model, order):
    """``[(optimizer key, array)]`` of the trainable weights in Keras's variable order."""
    slots = {(id(owner), key): p for p, owner, key in model.trainable_slots()}
    out = []
    for _, cls, name in order:
        if cls == "InputLayer":
            continue
        layer = model.get_layer(name)
        for k in kc.weight_keys(layer, cls):
            if (id(layer), k) in slots:
                out.append((slots[(id(layer), k)], layer.params[k]))
    return out


def _read_optimizer_state(model, order, h5, path):
    _, slot_names = kc.optimizer_to_keras(model.optimizer)
    group = h5.get("optimizer/vars")
    if group is None or slot_names is None:
        return
    trainable = _trainable_in_keras_order(model, order)
    expected = 2 + len(trainable) * len(slot_names)
    if len(group) != expected:
        warnings.warn(f"load_model: {path!r}: the optimizer state has {len(group)} arrays, "
                      f"minicnn's {type(model.optimizer).__name__} expects {expected}; "
                      f"training starts with fresh optimizer moments", stacklevel=3)
        return
    state, i = {}, 2
    for key, param in trainable:
        for slot in slot_names:
            value = group[str(i)][()]
            if np.shape(value) != param.shape:
                warnings.warn(f"load_model: {path!r}: optimizer array {i} has shape "
                              f"{np.shape(value)}, expected {param.shape}; training starts "
                              f"with fresh optimizer moments", stacklevel=3)
                return
            state[f"{key}/{slot}"] = np.asarray(value, dtype=param.dtype)
            i += 1
    model.optimizer.set_state(int(group["0"][()]), state)


def _compile_from_keras(model, compile_config, path):
    """Compile ``model`` as ``compile_config`` says, where minicnn has the pieces; warn
    naming what is skipped. Returns True when the model was compiled."""
    from .models import METRICS
    optimizer, why_opt = kc.optimizer_from_keras(compile_config.get("optimizer"))
    loss, why_loss = kc.loss_from_keras(compile_config.get("loss"))
    if optimizer is None or loss is None:
        warnings.warn(f"load_model: {path!r}: compile_config skipped, minicnn has no "
                      f"{why_opt or why_loss}; the model is returned uncompiled: call "
                      f"model.compile(...)", stacklevel=3)
        return False
    metrics, skipped = [], []
    for m in compile_config.get("metrics") or []:
        (metrics if isinstance(m, str) and m.lower() in METRICS else skipped).append(m)
    for key in ("loss_weights", "weighted_metrics"):
        if compile_config.get(key):
            skipped.append(f"{key}={compile_config[key]!r}")
    if skipped:
        warnings.warn(f"load_model: {path!r}: compile_config entries skipped (minicnn has no "
                      f"such metric or option): {', '.join(map(str, skipped))}", stacklevel=3)
    model.compile(optimizer, loss, metrics or None)
    return True


def load_keras_model(path, compile=True):
    """A minicnn model from the Keras 3 ``.keras`` file ``path`` (see the module docstring)."""
    what = "load_model"
    spec, weights = read_archive(path, what)
    model, order = model_from_keras_config(spec, f"{what}: {path!r}")
    with _open_h5(weights, path, what) as h5:
        _read_layer_weights(model, order, h5, path, what)
        compile_config = spec.get("compile_config")
        if compile and isinstance(compile_config, dict) and \
                _compile_from_keras(model, compile_config, path):
            _read_optimizer_state(model, order, h5, path)
    return model


def load_keras_weights(model, path):
    """Load a Keras ``.weights.h5`` file (or a ``.keras`` file's weights) into ``model``."""
    what = "load_weights"
    if not model.built:
        raise ValueError(f"{what}: build the model before loading Keras weights from {path!r}")
    if path.lower().endswith(".keras"):
        _, data = read_archive(path, what)
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what}: no such file {path!r}")
        with open(path, "rb") as fh:
            data = fh.read()
    with _open_h5(data, path, what) as h5:
        _read_layer_weights(model, keras_order(model), h5, path, what)


# ----------------------------------------------------------------------------- minicnn -> Keras
def _dtype_policy(dtype):
    return {"module": "keras", "class_name": "DTypePolicy",
            "config": {"name": np.dtype(dtype).name}, "registered_name": None}


def _batch(shape):
    if isinstance(shape, list):
        return [_batch(s) for s in shape]
    return [None] + list(shape)


def _tensor(model, t):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": _batch(t.shape[1:]), "dtype": t.dtype,
                       "keras_history": [t.node.layer.name, model.node_index(t.node), t.index]}}


def _keras_input_entry(name, shape, dtype):
    return {"module": "keras.layers", "class_name": "InputLayer",
            "config": {"batch_shape": _batch(shape), "dtype": np.dtype(dtype).name,
                       "sparse": False, "ragged": False, "name": name},
            "registered_name": None}


def _keras_layer_entry(layer, cls):
    return {"module": "keras.layers", "class_name": cls,
            "config": kc.keras_layer_config(layer, _dtype_policy), "registered_name": None,
            "build_config": {"input_shape": _batch(layer.input_shape)}}


def keras_model_config(model, order):
    """config.json's model part for a minicnn model (``order``: :func:`keras_order`)."""
    from .models import Sequential
    classes = {name: cls for _, cls, name in order}
    if isinstance(model, Sequential):
        first = model.layers[0]
        taken = {layer.name for layer in model.layers}
        in_name = getattr(model._input, "name", None) or "input_layer"
        while in_name in taken:
            in_name += "_0"
        entries = [_keras_input_entry(in_name, model.input_shape, first.dtype)]
        entries += [_keras_layer_entry(layer, classes[layer.name]) for layer in model.layers]
        return {"module": "keras", "class_name": "Sequential",
                "config": {"name": model.name, "trainable": model.trainable,
                           "layers": entries},
                "registered_name": None,
                "build_config": {"input_shape": _batch(model.input_shape)}}
    nodes = [t.node for t in model.inputs] + model.nodes
    entries = []
    for layer in model.layers:
        cls = classes[layer.name]
        if cls == "InputLayer":
            entry = _keras_input_entry(layer.name, layer.input_shape, layer.dtype)
        else:
            entry = _keras_layer_entry(layer, cls)
        entry["name"] = layer.name
        entry["inbound_nodes"] = [
            {"args": [[_tensor(model, t) for t in n.inputs] if n.multi_input
                      else _tensor(model, n.inputs[0])], "kwargs": {}}
            for n in nodes if n.layer is layer and not n.is_input]
        entries.append(entry)

    def refs(tensors, single):
        out = [[t.node.layer.name, model.node_index(t.node), t.index] for t in tensors]
        return out[0] if single else out
    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": model.name, "trainable": model.trainable, "layers": entries,
                       "input_layers": refs(model.inputs, model.input is model.inputs[0]),
                       "output_layers": refs(model.outputs, model.output is model.outputs[0])},
            "registered_name": "Functional", "build_config": {"input_shape": None}}


def _keras_compile_config(model):
    if not model.compiled:
        return None, None
    optimizer, slots = kc.optimizer_to_keras(model.optimizer)
    loss = kc.loss_to_keras(model.loss)
    if optimizer is None or loss is None:
        missing = (f"optimizer {type(model.optimizer).__name__}" if optimizer is None
                   else f"loss {type(model.loss).__name__}")
        warnings.warn(f"save: the {missing} has no Keras equivalent in minicnn's table; the "
                      f".keras file is saved without compile settings", stacklevel=4)
        return None, None
    return {"optimizer": optimizer, "loss": loss, "loss_weights": None,
            "metrics": list(model.metrics) or None, "weighted_metrics": None,
            "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}, slots


def _write_h5(model, order, slots):
    """The bytes of ``model.weights.h5`` (optimizer state included when ``slots`` is not
    None)."""
    buf = io.BytesIO()
    with h5py().File(buf, "w") as h5:
        for key, cls, name in order:
            group = h5.create_group(f"layers/{key}/vars")
            group.attrs["name"] = name
            if cls == "InputLayer":
                continue
            layer = model.get_layer(name)
            for i, k in enumerate(kc.weight_keys(layer, cls)):
                group.create_dataset(str(i), data=layer.params[k])
        h5.create_group("vars").attrs["name"] = model.name
        if slots is not None:
            opt = model.optimizer
            group = h5.create_group("optimizer/vars")
            group.attrs["name"] = type(opt).__name__.lower()
            group.create_dataset("0", data=np.int64(opt.iterations))
            group.create_dataset("1", data=np.float32(opt.learning_rate))
            i = 2
            for key, param in _trainable_in_keras_order(model, order):
                for slot in slots:
                    value = opt.state.get(key, {}).get(slot)
                    group.create_dataset(str(i), data=np.zeros_like(param) if value is None
                                         else value)
                    i += 1
    return buf.getvalue()


def save_keras_model(model, path):
    """Write ``model`` as a Keras 3 ``.keras`` file that ``keras.models.load_model`` opens."""
    order = keras_order(model)
    spec = keras_model_config(model, order)
    compile_config, slots = _keras_compile_config(model)
    if compile_config is not None:
        spec["compile_config"] = compile_config
    from . import __version__
    metadata = {"keras_version": KERAS_FORMAT_VERSION, "saved_by": f"minicnn {__version__}",
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("metadata.json", json.dumps(metadata))
        zf.writestr("config.json", json.dumps(spec))
        zf.writestr("model.weights.h5", _write_h5(model, order, slots))
    saving.write_atomically(path, buf.getvalue())


def save_keras_weights(model, path):
    """Write ``model``'s weights as a Keras 3 ``.weights.h5`` file."""
    order = keras_order(model)
    _, slots = _keras_compile_config(model)
    saving.write_atomically(path, _write_h5(model, order, slots))
