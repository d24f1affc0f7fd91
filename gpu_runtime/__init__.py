"""The real engine: a Llama-family model on a paged KV cache, driven by the shared policies.

The engine is the scheduling core the simulator also runs (``twin.core``): every free lane asks
the policy for the partition and a batch, the batch's KV is committed through
``policies.KVCache``, the forward pass runs, and the lane reports back. On a GPU each lane runs
on its own stream (green-context streams in split mode); on a CPU the lanes run one after the
other, which is what tests use.

Import the submodules directly (``gpu_runtime.engine``, ``gpu_runtime.server`` ...): this
package imports nothing at import time so that ``twin`` starts without torch.
"""
