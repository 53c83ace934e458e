"""tropd: Trust Region On-Policy Distillation, as a service.

One import namespace, three parts (docs/architecture.md is the map):

* `tropd.wire`    the wire contract as Python: generated gRPC stubs (`tropd.wire.v1`, from
                  `proto/`), the array codec and the value types both sides share. Light: no
                  torch.
* `tropd.teacher` the teacher service (`services/teacher/`): gRPC server, scheduler, backends,
                  HTTP side port, and the light client students use (`tropd.teacher.client`).
* `tropd.trainer` the student trainer (`services/student_trainer/`): the training step
                  (`tropd.trainer.loop`), rollouts, losses, tasks, checkpoints, the CLI.

Beside them, `tropd.errors` holds the one error both sides raise alike (`ConfigError`).
"""

__version__ = "0.1.0"
