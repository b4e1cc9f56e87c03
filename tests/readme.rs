//! The README opens with the two set-up commands, and CI runs the second one verbatim.

fn readme_commands() -> Vec<String> {
    let readme = include_str!("../README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("README opens with a ```sh block")
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn readme_starts_with_the_main_job_and_the_test_command() {
    let readme = include_str!("../README.md");
    let first_block = readme.find("```sh").expect("a shell block");
    let first_heading = readme[1..].find("\n#").map_or(usize::MAX, |i| i + 1);
    assert!(
        first_block < first_heading,
        "the commands come before any section"
    );
    let cmds = readme_commands();
    assert_eq!(cmds.len(), 2, "exactly two commands: {cmds:?}");
    assert!(
        cmds[0].contains("cargo run"),
        "first runs the main job: {}",
        cmds[0]
    );
    assert!(
        cmds[1].contains("cargo test"),
        "second runs the tests: {}",
        cmds[1]
    );
}

#[test]
fn ci_runs_the_readme_test_command() {
    let ci = include_str!("../.ci/run");
    let test_cmd = &readme_commands()[1];
    assert!(
        ci.lines().any(|l| l.trim() == test_cmd.trim()),
        ".ci/run must run the README's test command verbatim: {test_cmd}"
    );
}
