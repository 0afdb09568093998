"""Full models built on fusednn layers, one flat file each, with a config dataclass each:

* ``LSTMLanguageModel`` / ``LSTMLanguageModelConfig``: embedding, LSTM, tied output layer;
  ``generate`` carries the LSTM state from token to token.
* ``GRUClassifier`` / ``GRUClassifierConfig``: bidirectional GRU over packed variable-length
  sequences, pooled over the valid steps.
* ``ConvLSTMPredictor`` / ``ConvLSTMPredictorConfig``: ConvLSTM encoder and a 1x1 conv head
  predicting the next frame.
* ``ResNet`` / ``ResNetConfig`` and ``resnet18``, ``resnet34``, ``resnet50``: torchvision's
  ResNets (its module names: its state_dicts load as they are), each convolution, batch
  norm, residual add and ReLU fused (``fusednn.nn.conv_bn_act``), channels_last.
* ``InceptionNet`` / ``InceptionNetConfig``: a small GoogLeNet-style network for 32x32
  images, every convolution a ``fusednn.nn.ConvBNAct``.
* ``LinearTransformerLM`` / ``LinearTransformerLMConfig``: pre-norm causal linear-attention
  blocks (``fusednn.nn.LinearAttention``) with fused LayerNorm and a tied output layer;
  ``generate`` carries each layer's attention state, O(1) per token.

Each builds its recurrent, convolutional or attention layers from fusednn
(``layers="fusednn"``) or from torch (``layers="torch"``; the ConvLSTM and the linear
attention, which torch lacks, on the reference backend) with the same parameters. ``fusednn.models.tasks`` holds seeded
synthetic tasks for them and the training run of ``python -m fusednn train``.
Every name in a model module's ``__all__`` is exported here.
"""

from .._runtime import export_families

__all__ = export_families(__name__, __path__, globals())
