"""Standard tasks of the field: pure JAX batch samplers with their loss, metric and usual network.

Every task is a :class:`Task`::

  task = ep.tasks.evidence_accumulation(dt=10.0)
  model, params = task.network(jax.random.key(0))
  inputs, targets = jax.jit(task.sample, static_argnums=1)(jax.random.key(1), 32)
  grad_fn = ep.eprop(model, task.loss, reg=task.reg)
  loss, grads = grad_fn(params, inputs, targets)
  outputs, _ = ep.tasks.forward(model, params, inputs)
  accuracy = task.metric(outputs, targets)
"""

from ._common import Task as Task
from ._common import cross_entropy as cross_entropy
from ._common import evaluate as evaluate
from ._common import forward as forward
from ._common import is_spiking as is_spiking
from ._common import mse as mse
from ._common import network as network
from ._common import nmse as nmse
from ._common import squared_error as squared_error
from ._common import step_accuracy as step_accuracy
from ._common import window_accuracy as window_accuracy
from ._digits import digits as digits
from ._evidence import evidence_accumulation as evidence_accumulation
from ._pattern import pattern_generation as pattern_generation
from ._sequence import adding as adding
from ._sequence import delayed_copy as delayed_copy
from ._store_recall import store_recall as store_recall

# name -> factory, as the command line spells them
TASKS = {
    "evidence": evidence_accumulation,
    "store_recall": store_recall,
    "pattern": pattern_generation,
    "copy": delayed_copy,
    "adding": adding,
    "digits": digits,
}
