module steward.test/majordomo_ingest

go 1.19
