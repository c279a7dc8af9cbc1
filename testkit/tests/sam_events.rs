//! Every `events/*.json` (the files `sam local invoke -e` takes) runs through
//! its function binary under the Runtime API emulator and gets the status and
//! body shape its `_expect` block documents. `sam_arm64.rs` does the same
//! with the arm64 bootstraps of `sam build` (`scripts/sam-smoke`).

use std::collections::BTreeSet;

use credits_testkit::sam::{self, EXAMPLE_TOKEN};
use credits_testkit::stack::Stack;

#[tokio::test]
async fn every_sam_event_file_gets_the_status_it_documents() {
    let mut stack = Stack::start().await;
    stack.rotate_admin_token(EXAMPLE_TOKEN).await;
    let files = sam::event_files();
    assert!(files.len() >= 10, "events/ holds an event per route and error case");

    let binaries: BTreeSet<&str> = files.iter().map(|f| f.expect.binary.as_str()).collect();
    let mut checked = 0;
    for binary in binaries {
        let lambda = stack.lambda(binary, 1).await;
        for file in files.iter().filter(|f| f.expect.binary == binary) {
            sam::check_event(&lambda, file).await;
            checked += 1;
        }
    }
    assert_eq!(checked, files.len());
}
