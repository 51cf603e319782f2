"""One home of every path (clsbench.layout): the rules, tables, best.json, apply and export agree on it."""
import pytest

from clsbench import UserError, grid, layout


def test_a_cell_folder_gives_its_keys_run_and_neighbours(tmp_path):
    folder = tmp_path / "run/results/news/smollm2-135m/head/r8/s42"
    folder.mkdir(parents=True)
    cell, results = layout.Cell.at(folder)
    assert cell == grid.Cell("news", "smollm2-135m", "head", 8, 42) and results == (tmp_path / "run/results").resolve()
    assert cell.path == "results/news/smollm2-135m/head/r8/s42"
    assert cell.configuration == "results/news/smollm2-135m/head/r8"
    assert cell.trial(2) == "results/news/smollm2-135m/head/r8/tune/t2/s42"
    assert layout.data_dir_of(folder) == (tmp_path / "run/results/data/news").resolve()
    assert layout.model_json_of(folder) == (tmp_path / "run/results/models/smollm2-135m/model.json").resolve()
    assert layout.CELL.format(**vars(cell)) == cell.path  # the rules' wildcard pattern is the same path


def test_mode_files_and_metrics_paths():
    assert layout.mode_file("metrics", "score") == layout.mode_file("metrics") == "metrics.json"
    assert layout.mode_file("predictions", "generate", "parquet") == "predictions_generate.parquet"
    assert layout.mode_file("predict_info", "classifier") == "predict_info.json"
    cell, mode = layout.metrics_of("results/news/smollm2-135m/instruct/r64/s1/metrics_generate.json")
    assert (cell.approach, cell.rank, cell.seed, mode) == ("instruct", 64, 1, "generate")
    assert layout.metrics_of("results/news/tfidf/tfidf/r0/s1/metrics.json")[1] is None


def test_a_file_that_is_not_a_cells_metrics_is_named():
    for path in ("gone/metrics.json", "results/news/m/head/r8/s1/scores.json"):
        with pytest.raises(UserError, match=rf"^{path}: not a cell's metrics path \(results/<dataset>/"):
            layout.metrics_of(path)


@pytest.mark.parametrize("path", ["results/news/head/r8", "results/news/m/head/rx/s1", "results/news/m/head/r8/s1/val"])
def test_a_folder_that_is_not_a_cell_is_named(path):
    with pytest.raises(UserError, match=r"not a cell folder \(results/<dataset>/<model>/<approach>/r<rank>/s<seed>\)"):
        layout.Cell.at(path)
