"""Application logic. So far: the seeded synthetic market; the feature, prediction and job processors come next."""
