"""tropd student trainer: on-policy distillation of a student against a teacher service."""
