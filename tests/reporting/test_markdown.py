"""The one Markdown table writer."""

from vibbench.reporting.markdown import markdown_table


def test_a_table_has_a_header_a_rule_and_one_line_per_row():
    assert markdown_table(["model", "error"], [["`a`", "1.00%"], ["`b`", 2]]) == [
        "| model | error |",
        "|---|---|",
        "| `a` | 1.00% |",
        "| `b` | 2 |",
    ]


def test_a_pipe_inside_a_cell_is_escaped_so_the_columns_stay_put():
    lines = markdown_table(["a|b"], [["x | y"]])
    assert lines == ["| a\\|b |", "|---|", "| x \\| y |"]


def test_no_rows_leaves_the_header():
    assert markdown_table(["a", "b"], []) == ["| a | b |", "|---|---|"]
