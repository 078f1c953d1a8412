"""The lab: local mirror + sandbox hosts used by scripts/demo and the tests."""
