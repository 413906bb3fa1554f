# (stage rules: generator)
