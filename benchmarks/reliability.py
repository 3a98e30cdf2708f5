"""Every bad input and fault tried on frcnn, the behaviour we promise for it, and the tests that
check it: `python benchmarks/reliability.py` runs those tests and writes reports/reliability.md
with each case's outcome (passed / failed / skipped and why), the commit and the machine.

The catalogue below is the list; tests/benchmarks/test_reliability.py checks that every test it
names exists, so a renamed test cannot silently drop a case.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (area, case, what happens, tests)
CASES: list[tuple[str, str, str, list[str]]] = [
    ("input data", "XML with entity expansion (billion laughs) or an external entity",
     "refused as malformed, file named; nothing expanded or fetched",
     ["tests/data/test_voc.py::test_entity_tricks_are_refused"]),
    ("input data", "malformed XML, missing fields, unreadable file",
     "one issue per file in data_summary.json naming file and problem",
     ["tests/data/test_voc.py::test_malformed_files_name_the_file_and_problem",
      "tests/data/test_voc.py::test_missing_file",
      "tests/data/test_preprocess.py::test_bad_annotations_are_counted_and_named"]),
    ("input data", "a NaN or inf box coordinate, `<width>inf</width>`, a non-finite flag",
     "malformed: the image is skipped and named; every JSON stays strict",
     ["tests/data/test_voc.py::test_a_non_finite_box_coordinate_is_malformed",
      "tests/data/test_voc.py::test_a_non_finite_size_is_malformed_like_any_unreadable_size",
      "tests/data/test_voc.py::test_a_non_finite_flag_is_malformed",
      "tests/data/test_preprocess.py::test_non_finite_numbers_skip_the_image_and_the_json_stays_strict",
      "tests/test_fileio.py::test_what_cannot_be_nulled_is_refused_and_nothing_is_written"]),
    ("input data", "an absolute `<filename>`, `..` or a symlink leading out of JPEGImages/",
     "the image is skipped, the resolved path named: nothing outside the dataset is read",
     ["tests/data/test_preprocess.py::test_filename_outside_jpegimages_is_skipped",
      "tests/data/test_preprocess.py::test_symlink_out_of_jpegimages_is_skipped",
      "tests/data/test_preprocess.py::test_image_id_climbing_out_of_the_dataset_is_skipped",
      "tests/data/test_preprocess.py::test_paths_that_stay_inside_jpegimages_are_used"]),
    ("input data", "a class not in the class list",
     "data.unknown_class: error names the file and writes nothing; drop counts it",
     ["tests/data/test_preprocess.py::test_unknown_class_error_names_the_file_and_writes_nothing",
      "tests/data/test_preprocess.py::test_unknown_class_drop_is_counted"]),
    ("input data", "an EXIF-rotated JPEG",
     "read as displayed everywhere; a size mismatch explained by the rotation is said so",
     ["tests/data/test_exif.py::test_load_rgb_and_read_image_give_the_displayed_frame",
      "tests/data/test_exif.py::test_an_annotation_in_the_displayed_frame_is_kept_whole",
      "tests/data/test_exif.py::test_an_annotation_of_the_stored_frame_is_reported_as_the_rotation"]),
    ("input data", "missing or truncated inputs of a stage",
     "one line naming the file and the stage to run first, exit 2",
     ["tests/test_cli.py::test_stages_without_their_inputs_exit_2_naming_the_file",
      "tests/data/test_augment.py::test_missing_input_is_a_clear_error",
      "tests/data/test_preprocess.py::test_missing_manifest_is_a_clear_error"]),
    ("downloads", "an archive with `..`, absolute paths or links out",
     "refused before anything is written",
     ["tests/data/test_download.py::test_unsafe_tar_is_refused_before_writing_anything",
      "tests/data/test_download.py::test_unsafe_zip_is_refused",
      "tests/data/test_download.py::test_download_traversal_attempt_is_refused"]),
    ("downloads", "MD5 mismatch", "named, nothing kept",
     ["tests/data/test_download.py::test_fetch_md5_mismatch_is_an_error_and_leaves_no_file",
      "tests/data/test_download.py::test_download_url_md5_mismatch_leaves_nothing"]),
    ("downloads", "a cut connection, a partial file from an earlier run",
     "resumed with Range",
     ["tests/data/test_download.py::test_fetch_resumes_after_a_cut_connection",
      "tests/data/test_download.py::test_fetch_resumes_a_partial_file_from_an_earlier_run"]),
    ("downloads", "a refused mirror, a 500, every mirror down",
     "the next mirror; when all fail, each named",
     ["tests/data/test_download.py::test_fetch_falls_back_to_mirrors_after_refused_and_500",
      "tests/data/test_download.py::test_fetch_all_mirrors_failing_lists_each"]),
    ("downloads", "a captive portal's HTML saved as .tar.gz; a body cut with no Content-Length",
     "validated before caching, never cached",
     ["tests/data/test_download.py::test_html_served_as_tar_gz_is_never_cached",
      "tests/data/test_download.py::test_a_body_cut_without_content_length_is_never_cached"]),
    ("downloads", "a bad or resized cached copy; a changed upstream file",
     "deleted and fetched again; ETag/Last-Modified revalidation",
     ["tests/data/test_download.py::test_a_bad_cached_copy_is_deleted_and_fetched_again",
      "tests/data/test_download.py::test_a_cached_copy_whose_size_changed_is_fetched_again",
      "tests/data/test_download.py::test_a_changed_upstream_file_is_fetched_again",
      "tests/data/test_download.py::test_304_keeps_the_cache",
      "tests/data/test_download.py::test_revalidation_that_fails_keeps_the_good_cache",
      "tests/data/test_download.py::test_download_stage_picks_up_a_changed_upstream_archive"]),
    ("downloads", "a successful download", "a summary line (files, MB, splits)",
     ["tests/data/test_download.py::test_download_url_end_to_end_then_reuse"]),
    ("training", "Ctrl-C (SIGINT) or SIGTERM during training",
     "a checkpoint at the step it came, one line saying where, exit 130/143; resuming equals "
     "an uninterrupted run",
     ["tests/engine/test_trainer.py::test_a_signal_saves_a_checkpoint_at_the_step_it_came_and_resuming_equals_no_interruption"]),
    ("training", "a `dvc repro` killed mid-train, then rerun; then a changed budget",
     "continues from the persistent checkpoint to the uninterrupted run's metrics; another "
     "budget starts over",
     ["tests/pipeline/test_dvc_resume.py::test_a_killed_dvc_repro_continues_from_its_checkpoint_and_ends_as_if_never_stopped",
      "tests/engine/test_trainer.py::test_auto_resume_continues_only_an_unfinished_run_of_the_same_params_and_code"]),
    ("training", "a queued `dvc exp run` killed mid-train (its temporary copy deleted), run again",
     "the next copy continues from the checkpoint copy kept under the project's .dvc/tmp",
     ["tests/pipeline/test_dvc_resume.py::test_a_queued_experiment_killed_mid_train_continues_in_its_next_temporary_copy"]),
    ("training", "SIGINT while the process ignores it (a background job, nohup)",
     "stays ignored: the run goes on",
     ["tests/engine/test_trainer.py::test_a_signal_the_process_ignores_stays_ignored"]),
    ("training", "kill -9 mid-run, `--resume`", "bit-identical continuation",
     ["tests/engine/test_trainer.py::test_resume_reaches_the_same_weights_as_an_uninterrupted_run",
      "tests/pipeline/test_stages.py::test_resume_continues_and_refuses_a_changed_objective"]),
    ("training", "`--resume` with another objective, or with no checkpoint",
     "refused naming the keys / the missing file",
     ["tests/engine/test_trainer.py::test_resume_refuses_a_checkpoint_from_another_config",
      "tests/pipeline/test_stages.py::test_resume_continues_and_refuses_a_changed_objective"]),
    ("training", "a NaN/inf loss", "stops naming the step and the term; says whether a "
     "checkpoint exists", ["tests/engine/test_trainer.py::test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint",
                           "tests/engine/test_trainer.py::test_the_nan_message_says_when_no_checkpoint_exists_yet"]),
    ("training", "a loss exploding to 1e9 but finite", "flagged once, kept in summary.json",
     ["tests/engine/test_trainer.py::test_a_loss_that_explodes_but_stays_finite_is_flagged"]),
    ("checkpoints", "a truncated file, a foreign file, a byte flipped inside a tensor",
     "named (corrupted: the stored digest no longer matches)",
     ["tests/engine/test_trainer.py::test_load_checkpoint_names_a_corrupt_file",
      "tests/engine/test_inference.py::test_load_detector_names_a_missing_or_foreign_checkpoint",
      "tests/engine/test_trainer.py::test_a_byte_flipped_inside_a_tensor_is_refused_on_load"]),
    ("checkpoints", "weights that do not fit the model", "missing/unexpected/reshaped keys named",
     ["tests/engine/test_trainer.py::test_a_state_dict_that_does_not_fit_is_named_key_by_key"]),
    ("checkpoints", "evaluate with params.yaml's model differing from the checkpoint's",
     "says the checkpoint's architecture is used",
     ["tests/pipeline/test_stages.py::test_evaluate_says_when_the_checkpoints_architecture_overrides_the_params"]),
    ("outputs", "`frcnn predict d --out d` and other outputs over inputs",
     "never overwrites an input or a user's file; picks a new name and says so",
     ["tests/engine/test_inference.py::test_predict_into_the_input_folder_never_overwrites_an_input",
      "tests/engine/test_inference.py::test_an_input_given_by_name_or_reached_through_a_symlink_is_not_overwritten",
      "tests/engine/test_inference.py::test_a_users_file_in_the_output_folder_survives",
      "tests/engine/test_inference.py::test_images_with_the_same_stem_do_not_overwrite_each_other"]),
    ("outputs", "a read-only output folder (reports/, models/)",
     "found before any work, path and cause named; no output replaced",
     ["tests/pipeline/test_faults.py::test_a_read_only_reports_folder_stops_preprocess_before_it_replaces_any_output",
      "tests/pipeline/test_faults.py::test_a_read_only_models_folder_is_found_before_the_first_step"]),
    ("outputs", "a full disk (tiny tmpfs); a write failing half-way (RLIMIT_FSIZE)",
     "named up front with the space lacking; half-way: every old output stays",
     ["tests/pipeline/test_faults.py::test_a_full_disk_is_named_up_front_with_the_space_it_lacks",
      "tests/pipeline/test_faults.py::test_a_write_that_fails_half_way_leaves_every_old_output",
      "tests/test_fileio.py::test_a_transaction_lands_every_output_or_none"]),
    ("outputs", "two runs replacing one folder at once",
     "the second is told which pid holds the lock; the first wins",
     ["tests/pipeline/test_faults.py::test_two_runs_replacing_one_folder_the_second_is_told_and_the_first_wins",
      "tests/test_fileio.py::test_a_folder_being_replaced_is_locked_and_the_second_writer_told_who_holds_it"]),
    ("tracking", "MLflow server down or hanging", "one line; training continues",
     ["tests/pipeline/test_stages.py::test_unreachable_tracking_server_does_not_stop_training",
      "tests/pipeline/test_tracking.py::test_unreachable_server_disables_quickly",
      "tests/pipeline/test_tracking.py::test_server_that_never_answers_times_out"]),
    ("params", "a bad value, an unknown key, a bad `--set`",
     "one line naming the key, exit 2",
     ["tests/test_cli.py::test_a_bad_param_is_one_error_line_and_exit_2",
      "tests/test_cli.py::test_set_overrides_are_yaml_values"]),
    ("params", "`--set` on every command that reads params", "accepted",
     ["tests/test_cli.py::test_every_command_that_reads_params_takes_set",
      "tests/engine/test_inference.py::test_predict_takes_the_inference_keys_from_set"]),
]


def node_ids() -> list[str]:
    return sorted({t for *_, tests in CASES for t in tests})


def run_tests(ids: list[str]) -> dict[str, tuple[str, str]]:
    """node id -> (outcome, detail) from one pytest run (slow ones included)."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider",
                        f"--junitxml={junit}", *ids], cwd=REPO, check=False)
        root = ET.parse(junit).getroot()
    out: dict[str, tuple[str, str]] = {}
    for case in root.iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        name = case.get("name", "").split("[")[0]
        key = f"{path}::{name}"
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, detail = "failed", (child.get("message") or "")[:120]
            elif child.tag == "skipped":
                outcome, detail = "skipped", (child.get("message") or "")[:120]
        previous = out.get(key)
        if previous is None or previous[0] == "passed":  # a failing parametrisation wins
            out[key] = (outcome, detail)
    return out


def markdown(results: dict[str, tuple[str, str]]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    lines = ["# Reliability: every case tried, and what happens", "",
             f"Generated by `python benchmarks/reliability.py` at commit {commit} on "
             f"{platform.machine()} / Python {platform.python_version()}, "
             f"{_dt.date.today().isoformat()}. Each case's tests ran once; a case passes when all "
             "of them pass.", "",
             "| area | case | what happens | tests | outcome |", "|---|---|---|---|---|"]
    total = {"passed": 0, "failed": 0, "skipped": 0}
    for area, case, behaviour, tests in CASES:
        outcomes = [results.get(t, ("not run", "")) for t in tests]
        worst = ("failed" if any(o == "failed" or o == "not run" for o, _ in outcomes) else
                 "skipped" if any(o == "skipped" for o, _ in outcomes) else "passed")
        total[worst if worst in total else "failed"] += 1
        notes = "; ".join(f"{t.split('::')[1]}: {o} ({d})" for t, (o, d) in zip(tests, outcomes)
                          if o != "passed")
        names = "<br>".join(f"`{t.split('::')[1]}`" for t in tests)
        lines.append(f"| {area} | {case} | {behaviour} | {names} | **{worst}**"
                     f"{' — ' + notes if notes else ''} |")
    lines += ["", f"{len(CASES)} cases: {total['passed']} passed, {total['failed']} failed, "
                  f"{total['skipped']} skipped."]
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.path.insert(0, str(REPO))
    from frcnn.fileio import atomic_write_text

    results = run_tests(node_ids())
    text = markdown(results)
    atomic_write_text(REPO / "reports" / "reliability.md", text)
    print(text)


if __name__ == "__main__":
    main()
