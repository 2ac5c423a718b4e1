"""nn.Module building blocks over omicskern.ops (attention blocks, HyenaOperator, ...)."""
