"""What the machine can do: devices, the accelerator registry and its self-tests, the weights, tiny models,
`mpod123 doctor`, and the progress events every layer reports through.

Kept empty of imports: ``mpod123.runtime.progress`` is pure Python and loads no torch."""
