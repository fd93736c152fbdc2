-- iot_rules for the end-to-end benchmark's Brisk server (bench/e2e.lua reads
-- this file when mod_brisk_iot exists).  Rules a device fleet would have,
-- with log targets at debug level, which the benchmark's warn-level log
-- drops: the presence scenario then pays for rule matching and transitions
-- (its show alternates away/chat, every fourth change is a flap) without
-- measuring webhook delivery.
return {
	{ name = "bench-offline", on = "offline", after = 60, log = "debug" },
	{ name = "bench-away", on = "state", show = "away", log = "debug" },
	{ name = "bench-flapping", on = "flapping", transitions = 5, within = 60, log = "debug" },
};
