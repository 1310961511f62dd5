"""Non-NN numerics: tracking, registration, XANES fitting, morphology."""
