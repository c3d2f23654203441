"""Read an ONNX image classifier into a differentiable torch module, running no code.

ONNX is the safe way to bring an architecture smoothinv does not know: the file is a
protobuf of tensors and a graph of standard operators, so unlike pickle or TorchScript it
cannot carry code. It is parsed with the ``onnx`` package (a protobuf parser; nothing in
the file is executed) and interpreted node by node with torch ops, so gradients flow to
the input, which SmoothInv needs.

Why a converter of our own: onnx2torch imports torchvision, which does not import on
every install; onnxruntime runs the graph, but outside torch's autograd. Interpreting a
fixed list of operators also lets us refuse, before anything runs, what we cannot bound:

* operators outside the standard domain (custom ops) and unknown operators, by name;
* control flow (If, Loop, Scan) and every graph-valued attribute: a loop can run forever;
* tensors stored outside the file, unless in a regular file inside the model's folder
  (``torch.onnx.export`` writes the weights to ``model.onnx.data`` beside the model);
* graphs without exactly one image input [batch, channels, H, W] and one output;
* operators that would create a tensor of more than MAX_CREATED_PER_IMAGE elements per
  image of the batch (``ConstantOfShape``, ``Expand``, ``Pad``, ...).

Exporters fix the batch size by default (usually 1). Such a graph is run once on random
images, together and one at a time: if the logits agree it gets any batch in one pass,
otherwise batches are cut into chunks of the exported size (correct, slower).

The package, by layer (each imports only those above it):

* ``plan``: the data the reader produces and the handlers consume (``Op``, ``RunContext``);
* ``ops_nn``, ``ops_tensor``: the operator handlers; ``operators``: the name -> handler table;
* ``module``: ``OnnxGraph``, the nn.Module that runs the plan, and the fixed-batch trial;
* ``reader``: ``read_onnx``: parsing, the refusals above, tensor decoding, planning.
"""

from smoothinv.models.onnx.module import OnnxGraph
from smoothinv.models.onnx.reader import OnnxModel, OnnxRefused, read_onnx

__all__ = ["OnnxGraph", "OnnxModel", "OnnxRefused", "read_onnx"]
