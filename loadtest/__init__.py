"""Load-test stage: Locust users and a headless runner with p50 gates."""
