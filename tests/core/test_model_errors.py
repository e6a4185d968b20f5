"""describe_error: a model's error in one line, the line that raised it for an empty message."""

from pyro_blr.core.model_errors import describe_error


def raises_without_message():
    raise AssertionError  # as a bare assert raises it (pytest gives this file's asserts text)


def test_the_first_non_blank_line_of_the_message():
    error = ValueError("\nbad value at site 'x'\n   Trace Shapes: ...")
    assert describe_error(error) == "ValueError: bad value at site 'x'"


def test_an_empty_message_names_the_line_that_raised():
    try:
        raises_without_message()
    except AssertionError as error:
        described = describe_error(error)
    assert described.startswith("AssertionError at test_model_errors.py:")
    assert ": raise AssertionError  # as a bare assert raises it" in described


def test_an_error_never_raised_is_its_type():
    assert describe_error(AssertionError()) == "AssertionError"
