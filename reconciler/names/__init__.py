"""The names table: the declared name, source file and git revision of every resource whose
entries the kernel keys by id, so that plans, `get` and deletions name what the operator
wrote rather than what an id derives."""
