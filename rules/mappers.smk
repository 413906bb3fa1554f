# (stage rules: mappers)
