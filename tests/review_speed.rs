mod common;
#[tokio::test]
async fn placeholder() {}
