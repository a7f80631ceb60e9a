"""scripts/ppl_table.py's table: one line per scope, method and allocation, one column per sparsity."""

from scripts.ppl_table import table


def test_each_row_lands_in_its_scope_method_and_allocation_line():
    rows = [{"method": "dense", "sparsity": "0", "perplexity": 12.0, "overall_sparsity": 0.0}]
    for scope, base in (("mlp", 20.0), ("attention+mlp", 200.0)):
        for allocation, step in (("uniform", 0.0), ("sensitivity", -1.0)):
            for sparsity, extra in (("0.5", 0.0), ("0.7", 100.0)):
                rows.append({"method": "dass", "scope": scope, "allocation": allocation, "sparsity": sparsity,
                             "perplexity": base + extra + step, "overall_sparsity": float(sparsity)})
    lines = table(rows, ["0.5", "0.7"], ["dass"], ["uniform", "sensitivity"], ["mlp", "attention+mlp"]).strip().splitlines()
    assert lines[0] == "| scope | method | allocation | 0.5 | 0.7 |" and lines[2] == "| | dense | | 12.000 |"
    assert lines[3:] == ["| mlp | dass | uniform | 20.000 (0.5000) | 120.000 (0.7000) |",
                         "| mlp | dass | sensitivity | 19.000 (0.5000) | 119.000 (0.7000) |",
                         "| attention+mlp | dass | uniform | 200.000 (0.5000) | 300.000 (0.7000) |",
                         "| attention+mlp | dass | sensitivity | 199.000 (0.5000) | 299.000 (0.7000) |"]
