"""The table that maps Keras 3 classes to minicnn's, for reading and writing ``.keras`` files.

One :class:`KerasLayer` entry per Keras layer class says which minicnn class stands for
it, which Keras arguments pass through, which Keras arguments minicnn does not have (and
the values at which they change nothing), and the order of the layer's weights in the
file. Adding a layer is one entry in :data:`LAYERS`. Optimizers and losses have their own
small tables, :data:`OPTIMIZERS` and :data:`LOSSES`.

Nothing named in a file is imported or called: a ``class_name`` is a key into these
tables, a ``module`` is only checked to be Keras's own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import activations, config, initializers
from . import layers as minicnn_layers

#: Keras arguments every layer has (translated by :func:`layer_kwargs` itself)
_COMMON = ("name", "trainable", "dtype")
_NO_REGULARIZERS = {"kernel_regularizer": None, "bias_regularizer": None,
                    "activity_regularizer": None, "kernel_constraint": None,
                    "bias_constraint": None}
_CHANNELS_LAST = {"data_format": ("channels_last", None)}


@dataclass(frozen=True)
class KerasLayer:
    """How one Keras layer class reads into minicnn and writes back.

    minicnn: the class name in :mod:`minicnn.layers` (None while that layer does not exist
        yet: the entry is then listed as unsupported).
    args: the Keras config keys passed to the minicnn constructor (same names).
    fixed: Keras config keys minicnn has no argument for -> the value(s) at which the
        Keras layer computes what the minicnn one does; any other value is refused.
        A single value is also what gets written.
    weights: minicnn ``params`` keys in the order Keras stores the layer's variables
        (``vars/0``, ``vars/1``, ...); keys the layer does not have (no bias) are skipped.
    """
    minicnn: str | None
    args: tuple = ()
    fixed: dict = field(default_factory=dict)
    weights: tuple = ()

    @property
    def cls(self):
        return getattr(minicnn_layers, self.minicnn, None) if self.minicnn else None


_CONV_FIXED = {**_CHANNELS_LAST, "dilation_rate": ((1, 1), 1), "groups": 1, **_NO_REGULARIZERS}
_DENSE_FIXED = {**_NO_REGULARIZERS, "lora_rank": None, "lora_alpha": None,
                "quantization_config": None}

LAYERS: dict[str, KerasLayer] = {
    "Conv2D": KerasLayer("Conv2D", ("filters", "kernel_size", "strides", "padding", "activation",
                                    "use_bias", "kernel_initializer", "bias_initializer"),
                         _CONV_FIXED, ("kernel", "bias")),
    "Dense": KerasLayer("Dense", ("units", "activation", "use_bias", "kernel_initializer",
                                  "bias_initializer"), _DENSE_FIXED, ("kernel", "bias")),
    "MaxPooling2D": KerasLayer("MaxPooling2D", ("pool_size", "strides", "padding"),
                               _CHANNELS_LAST),
    "Flatten": KerasLayer("Flatten", (), _CHANNELS_LAST),
    "Activation": KerasLayer("Activation", ("activation",)),
    "ReLU": KerasLayer("ReLU", (), {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}),
    "Dropout": KerasLayer("Dropout", ("rate", "seed"), {"noise_shape": None}),
    "RandomFlip": KerasLayer("RandomFlip", ("mode", "seed"), _CHANNELS_LAST),
    # minicnn shifts by whole pixels: Keras's 'nearest' interpolation (see _warn_interpolation)
    "RandomTranslation": KerasLayer("RandomTranslation", ("height_factor", "width_factor",
                                                          "fill_mode", "seed"),
                                    {**_CHANNELS_LAST, "interpolation": ("nearest", "bilinear"),
                                     "fill_value": (0.0, 0)}),
    "Concatenate": KerasLayer("Concatenate", ("axis",)),
    **{name: KerasLayer(name) for name in ("Add", "Subtract", "Multiply", "Average", "Maximum",
                                           "Minimum")},
    # the entries below activate when minicnn.layers has the class (being written elsewhere)
    "BatchNormalization": KerasLayer(
        "BatchNormalization", ("axis", "momentum", "epsilon", "center", "scale",
                               "beta_initializer", "gamma_initializer",
                               "moving_mean_initializer", "moving_variance_initializer"),
        {"beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None,
         "gamma_constraint": None, "synchronized": False, "renorm": False,
         "renorm_clipping": None, "renorm_momentum": (0.99,)},
        ("gamma", "beta", "moving_mean", "moving_variance")),
    "AveragePooling2D": KerasLayer("AveragePooling2D", ("pool_size", "strides", "padding"),
                                   _CHANNELS_LAST),
    "GlobalAveragePooling2D": KerasLayer("GlobalAveragePooling2D", ("keepdims",),
                                         _CHANNELS_LAST),
}


def supported_layers() -> list[str]:
    """The Keras layer classes minicnn reads and writes today (their minicnn class exists)."""
    return sorted(["InputLayer"] + [k for k, e in LAYERS.items() if e.cls is not None])


def keras_name_for(layer) -> str:
    """The Keras class name of a minicnn layer (the table read backwards)."""
    cls_name = type(layer).__name__
    for keras_name, entry in LAYERS.items():
        if entry.cls is not None and type(layer) is entry.cls:
            return keras_name
    raise ValueError(f"{layer.name}: minicnn cannot write {cls_name} layers to a .keras file "
                     f"(Keras layers minicnn knows: {', '.join(supported_layers())}); save to "
                     f".npz instead")


def snake_case(name: str) -> str:
    """Keras's automatic names for a class: ``MaxPooling2D -> max_pooling2d``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


# ----------------------------------------------------------------------------- values
def check_keras_object(obj, what):
    """Refuse anything but Keras's own classes: ``module`` must be ``keras``/``keras.*``
    (or absent), and a name with ``__`` is never a Keras class."""
    module, cls = obj.get("module"), obj.get("class_name")
    if module is not None and (not isinstance(module, str)
                               or not (module == "keras" or module.startswith("keras."))):
        raise ValueError(f"{what}: module {module!r} (class {cls!r}) is not Keras; minicnn "
                         f"reads only Keras's own classes and never imports what a file names")
    if not isinstance(cls, str) or "__" in cls:
        raise ValueError(f"{what}: refusing class_name {cls!r}")
    return cls


def _activation(value, owner):
    """'relu' or Keras's ``{"module": "builtins", "class_name": "function", "config": "relu"}``
    (Keras serializes its activation functions that way) -> 'relu'."""
    if isinstance(value, dict):
        if (value.get("class_name") == "function" and value.get("module") in
                ("builtins", "keras.activations", "keras.src.activations.activations", None)
                and isinstance(value.get("config"), str)):
            value = value["config"]
        else:
            raise ValueError(f"{owner}: activation {value!r} is not one of Keras's activation "
                             f"functions minicnn has ({', '.join(activations.ACTIVATIONS)})")
    return activations.get(value, owner)


def _initializer(value, owner):
    """'glorot_uniform' or ``{"class_name": "GlorotUniform", "config": {"seed": None}}``."""
    if isinstance(value, dict):
        name = snake_case(check_keras_object(value, owner))
        extra = {k: v for k, v in (value.get("config") or {}).items() if v is not None}
        if extra:
            raise ValueError(f"{owner}: initializer {value['class_name']} with {extra} is not "
                             f"supported by minicnn")
        value = name
    return initializers.get(value, owner)


def dtype_name(value, owner):
    """'float32' or Keras's ``{"class_name": "DTypePolicy", "config": {"name": "float32"}}``."""
    if isinstance(value, dict):
        cls = check_keras_object(value, owner)
        if cls not in ("DTypePolicy", "FloatDTypePolicy"):
            raise ValueError(f"{owner}: dtype policy {cls!r} is not supported by minicnn")
        value = (value.get("config") or {}).get("name")
    return config.check_dtype(value, owner).name


def _same(value, allowed):
    allowed = allowed if isinstance(allowed, tuple) else (allowed,)

    def norm(v):
        return list(v) if isinstance(v, (tuple, list)) else v
    return any(norm(value) == norm(a) for a in allowed)


def layer_kwargs(class_name, cfg, where):
    """minicnn constructor arguments for a Keras layer ``class_name`` of config ``cfg``."""
    entry = LAYERS.get(class_name)
    if entry is None or entry.cls is None:
        raise ValueError(f"{where}: Keras layer class {class_name!r} is not supported by minicnn; "
                         f"supported: {', '.join(supported_layers())}")
    owner = f"{where} ({class_name})"
    kwargs = {"name": cfg.get("name"), "trainable": bool(cfg.get("trainable", True)),
              "dtype": dtype_name(cfg.get("dtype"), owner)}
    for key, value in cfg.items():
        if key in _COMMON:
            continue
        if key in entry.args:
            if key == "activation":
                value = _activation(value, owner)
            elif key.endswith("_initializer"):
                value = _initializer(value, owner)
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key in entry.fixed:
            if not _same(value, entry.fixed[key]):
                raise ValueError(f"{owner}: {key}={value!r} is not supported by minicnn "
                                 f"(only {entry.fixed[key]!r})")
        elif value is not None:
            raise ValueError(f"{owner}: Keras argument {key}={value!r} is not supported by "
                             f"minicnn")
    return entry.cls, kwargs


def keras_layer_config(layer, dtype_policy):
    """The Keras config of minicnn ``layer`` (``dtype_policy``: a dtype name -> Keras dict)."""
    entry = LAYERS[keras_name_for(layer)]
    mine = layer.get_config()
    cfg = {"name": layer.name, "trainable": layer.trainable, "dtype": dtype_policy(layer.dtype)}
    for key in entry.args:
        if key in mine:
            cfg[key] = mine[key]
    for key, value in entry.fixed.items():
        cfg[key] = value[0] if isinstance(value, tuple) else value
        if isinstance(cfg[key], tuple):
            cfg[key] = list(cfg[key])
    return cfg


def weight_keys(layer, class_name=None):
    """The layer's ``params`` keys in Keras's variable order."""
    entry = LAYERS.get(class_name or keras_name_for(layer))
    keys = [k for k in entry.weights if k in layer.params]
    if len(keys) != len(layer.params):
        raise ValueError(f"{layer.name}: weights {sorted(set(layer.params) - set(keys))} have no "
                         f"place in the Keras layout of {class_name or type(layer).__name__}")
    return keys


# ----------------------------------------------------------------------------- compile
#: Keras optimizer -> (minicnn class name, Keras config keys passed through, Keras keys
#: that must keep their default, the per-variable slots in Keras's order)
_OPTIMIZER_COMMON = ("weight_decay", "clipnorm", "global_clipnorm", "clipvalue")
OPTIMIZERS = {
    "Adam": ("Adam", ("learning_rate", "beta_1", "beta_2", "epsilon") + _OPTIMIZER_COMMON,
             {"amsgrad": False}, ("m", "v")),
    "AdamW": ("AdamW", ("learning_rate", "beta_1", "beta_2", "epsilon") + _OPTIMIZER_COMMON,
              {"amsgrad": False}, ("m", "v")),
    "SGD": ("SGD", ("learning_rate", "momentum", "nesterov") + _OPTIMIZER_COMMON, {},
            ("velocity",)),
}
_OPTIMIZER_DEFAULTS = {"use_ema": False, "loss_scale_factor": None,
                       "gradient_accumulation_steps": None}
_IGNORED_OPTIMIZER_KEYS = ("name", "ema_momentum", "ema_overwrite_frequency")
#: Keras loss class -> (minicnn loss name, Keras config keys that must keep their default)
LOSSES = {
    "CategoricalCrossentropy": ("categorical_crossentropy",
                                {"label_smoothing": 0.0, "axis": -1,
                                 "reduction": "sum_over_batch_size"}),
    "SparseCategoricalCrossentropy": ("sparse_categorical_crossentropy",
                                      {"ignore_class": None, "axis": -1,
                                       "reduction": "sum_over_batch_size"}),
}


def optimizer_from_keras(value):
    """(minicnn optimizer, None) or (None, why it cannot be read)."""
    from . import optimizers
    if isinstance(value, str):
        return (optimizers.get(value), None) if value.lower() in optimizers.OPTIMIZERS \
            else (None, f"optimizer {value!r}")
    if not isinstance(value, dict):
        return None, f"optimizer {value!r}"
    cls = check_keras_object(value, "compile_config optimizer")
    if cls not in OPTIMIZERS:
        return None, f"optimizer {cls!r}"
    mine, args, fixed, _ = OPTIMIZERS[cls]
    kwargs = {}
    for key, v in (value.get("config") or {}).items():
        if key in args:
            kwargs[key] = v
        elif key in _IGNORED_OPTIMIZER_KEYS:
            continue
        elif not _same(v, {**fixed, **_OPTIMIZER_DEFAULTS}.get(key, None)):
            return None, f"optimizer {cls} with {key}={v!r}"
    lr = kwargs.get("learning_rate", 1.0)
    if isinstance(lr, dict):                 # a schedule: minicnn's own classes only
        try:
            name = check_keras_object(lr, "compile_config learning_rate")
            kwargs["learning_rate"] = optimizers.schedules.from_config(
                {"class_name": name, "config": lr.get("config")})
        except (ValueError, TypeError):
            return None, f"optimizer {cls} with learning_rate={lr!r}"
    elif not isinstance(lr, (int, float)):
        return None, f"optimizer {cls} with learning_rate={lr!r}"
    return getattr(optimizers, mine)(**kwargs), None


def loss_from_keras(value):
    """(minicnn loss, None) or (None, why it cannot be read)."""
    from . import losses
    if isinstance(value, str):
        return (losses.get(value), None) if value.lower() in losses.LOSSES \
            else (None, f"loss {value!r}")
    if not isinstance(value, dict):
        return None, f"loss {value!r}"
    cls = check_keras_object(value, "compile_config loss")
    if cls not in LOSSES:
        return None, f"loss {cls!r}"
    name, fixed = LOSSES[cls]
    cfg = value.get("config") or {}
    for key, default in fixed.items():
        if key in cfg and not _same(cfg[key], default):
            return None, f"loss {cls} with {key}={cfg[key]!r}"
    return losses.LOSSES[name](from_logits=bool(cfg.get("from_logits", False))), None


def optimizer_to_keras(optimizer):
    """(Keras optimizer dict, slot names in Keras's order) or (None, None) when Keras has
    no equivalent in the table."""
    name = type(optimizer).__name__
    if name not in OPTIMIZERS or OPTIMIZERS[name][0] != name:
        return None, None
    _, args, fixed, slots = OPTIMIZERS[name]
    mine = optimizer.get_config()
    cfg = {"name": name.lower(), **{k: mine.get(k) for k in args}, **fixed}
    if isinstance(cfg["learning_rate"], dict):          # a schedule, in Keras's spelling
        cfg["learning_rate"] = {"module": "keras.optimizers.schedules",
                                "class_name": cfg["learning_rate"]["class_name"],
                                "config": cfg["learning_rate"]["config"],
                                "registered_name": None}
    if name == "SGD" and not optimizer.momentum:
        slots = ()                          # Keras's SGD keeps no velocity without momentum
    return {"module": "keras.optimizers", "class_name": name, "config": cfg,
            "registered_name": None}, slots


def loss_to_keras(loss):
    for cls, (name, fixed) in LOSSES.items():
        if loss.name == name:
            return {"module": "keras.losses", "class_name": cls,
                    "config": {"name": name, "from_logits": loss.from_logits,
                               "reduction": "sum_over_batch_size"},
                    "registered_name": None}
    return None

