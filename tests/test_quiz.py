"""The quiz cannot be gamed: option length and position say nothing about the right answer."""

from statistics import mean

from labkit.quiz import QUESTIONS, Question


def _answer_is_longest(q: Question) -> bool:
    others = [len(o) for i, o in enumerate(q.options) if i != q.answer_index]
    return len(q.answer) > max(others)


def test_the_right_answer_is_not_systematically_the_longest():
    longest = [q.question for q in QUESTIONS if _answer_is_longest(q)]
    # by chance one option in four is the longest; allow that, not a pattern
    assert len(longest) <= max(1, len(QUESTIONS) // 4), f"the right answer is the longest option in: {longest}"


def test_the_right_answer_is_about_as_long_as_the_others():
    for q in QUESTIONS:
        others = mean(len(o) for i, o in enumerate(q.options) if i != q.answer_index)
        assert abs(len(q.answer) - others) <= 0.2 * others, (q.question, len(q.answer), others)


def test_the_right_answer_moves_around():
    assert len({q.answer_index for q in QUESTIONS}) >= 3


def test_the_checks_can_fail():
    """The length checks above flag the old pattern: a long, careful right answer among short ones."""
    giveaway = Question("?", ("Short", "Also short", "The long, careful and clearly complete right answer"), 2, "")
    assert _answer_is_longest(giveaway)
    assert abs(len(giveaway.answer) - mean(len(o) for o in giveaway.options[:2])) > 0.2 * 7.5


def test_first_question_agrees_with_prompting_first():
    """Q1 used to ask what to 'try first' and answer RAG, against the course's 'prompting first'."""
    q = QUESTIONS[0]
    assert "try first" not in q.question.lower()
    assert "prompting comes first" in q.explanation.lower()
