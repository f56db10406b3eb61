"""What the tests share: real clusters, programs, users and the fixtures of tests/conftest.py.
Tests import helpers from here, never from another test module."""
