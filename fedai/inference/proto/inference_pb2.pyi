from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Layout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYOUT_UNSPECIFIED: _ClassVar[Layout]
    LAYOUT_ROWS: _ClassVar[Layout]
    LAYOUT_COLUMNS: _ClassVar[Layout]

class Activation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVATION_NONE: _ClassVar[Activation]
    ACTIVATION_RELU: _ClassVar[Activation]
LAYOUT_UNSPECIFIED: Layout
LAYOUT_ROWS: Layout
LAYOUT_COLUMNS: Layout
ACTIVATION_NONE: Activation
ACTIVATION_RELU: Activation

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LayerShape(_message.Message):
    __slots__ = ("in_features", "out_features", "activation")
    IN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    OUT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    in_features: int
    out_features: int
    activation: Activation
    def __init__(self, in_features: _Optional[int] = ..., out_features: _Optional[int] = ..., activation: _Optional[_Union[Activation, str]] = ...) -> None: ...

class CkksParameters(_message.Message):
    __slots__ = ("poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits")
    POLY_MODULUS_DEGREE_FIELD_NUMBER: _ClassVar[int]
    COEFF_MOD_BIT_SIZES_FIELD_NUMBER: _ClassVar[int]
    SCALE_BITS_FIELD_NUMBER: _ClassVar[int]
    poly_modulus_degree: int
    coeff_mod_bit_sizes: _containers.RepeatedScalarFieldContainer[int]
    scale_bits: int
    def __init__(self, poly_modulus_degree: _Optional[int] = ..., coeff_mod_bit_sizes: _Optional[_Iterable[int]] = ..., scale_bits: _Optional[int] = ...) -> None: ...

class ModelInfoReply(_message.Message):
    __slots__ = ("layers", "parameters", "max_rows", "max_request_bytes")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerShape]
    parameters: CkksParameters
    max_rows: int
    max_request_bytes: int
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerShape, _Mapping]]] = ..., parameters: _Optional[_Union[CkksParameters, _Mapping]] = ..., max_rows: _Optional[int] = ..., max_request_bytes: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("layer", "context", "layout", "rows", "features", "ciphertexts")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    context: bytes
    layout: Layout
    rows: int
    features: int
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, layer: _Optional[int] = ..., context: _Optional[bytes] = ..., layout: _Optional[_Union[Layout, str]] = ..., rows: _Optional[int] = ..., features: _Optional[int] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EvaluateReply(_message.Message):
    __slots__ = ("layout", "rows", "features", "outputs", "ciphertexts")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    layout: Layout
    rows: int
    features: int
    outputs: int
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, layout: _Optional[_Union[Layout, str]] = ..., rows: _Optional[int] = ..., features: _Optional[int] = ..., outputs: _Optional[int] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...
