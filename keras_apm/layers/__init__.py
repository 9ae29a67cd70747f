"""Keras layers that make up an APM; each works on its own."""

from keras_apm.layers.attention_pool import AttentionPoolHead
from keras_apm.layers.perception_field import PerceptionField
from keras_apm.layers.perception_mlp import PerceptionMLP
from keras_apm.layers.position_encoding import SinCosPositionEncoding2D
from keras_apm.layers.position_encoding import grid_locations
from keras_apm.layers.position_encoding import sincos_position_encoding_2d
from keras_apm.layers.query_unfold import QueryUnfold
from keras_apm.layers.trigger_column import TriggerColumn
