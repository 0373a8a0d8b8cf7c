//! Licence usage policy (T/AI 123.12 useScenes) and its pure evaluator
