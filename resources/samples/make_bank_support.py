"""Write the bank-support sample dataset (train.jsonl, valid.jsonl) beside this file.

Lathe's demo data: support answers of a small fictional bank, Harbor Bank, about its fees and
transfer times: the kind of house knowledge and house style that supervised fine-tuning teaches a
model. Each fact is asked in several ways; validation uses phrasings that training never shows, so
the validation loss measures whether the model learned the fact rather than the sentence.
Run `python resources/samples/make_bank_support.py` to regenerate; the output is deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are Harbor Bank's support assistant. Answer briefly, in a friendly tone."

# (questions, answer): the first questions go to training, the last one to validation.
FACTS: list[tuple[list[str], str]] = [
    (
        [
            "How much does a domestic transfer cost?",
            "What is the fee for sending money within the country?",
            "Do you charge for domestic transfers?",
            "Is a transfer to another local bank free?",
            "What do I pay to send money to a friend at another bank here?",
        ],
        "Domestic transfers are free at Harbor Bank, online and in the app.",
    ),
    (
        [
            "How much is an international transfer?",
            "What does it cost to send money abroad?",
            "What is the fee for a foreign transfer?",
            "Do you charge for sending money overseas?",
            "How much will I pay to wire money to another country?",
        ],
        "An international transfer costs 5 euros, plus the exchange rate margin of 0.5%.",
    ),
    (
        [
            "How long does a domestic transfer take?",
            "When will my transfer to another local bank arrive?",
            "How fast are transfers within the country?",
            "How long until money sent in the country arrives?",
            "When does the other bank receive my domestic transfer?",
        ],
        "Domestic transfers arrive the same business day if you send them before 4 pm.",
    ),
    (
        [
            "How long does an international transfer take?",
            "When will money I send abroad arrive?",
            "How many days does a foreign transfer take?",
            "How fast is a transfer to another country?",
            "When will my overseas payment reach the recipient?",
        ],
        "International transfers take 1 to 3 business days, depending on the country.",
    ),
    (
        [
            "Is there a monthly account fee?",
            "Do I pay anything to keep my account?",
            "What does the current account cost per month?",
            "Are there account maintenance fees?",
            "How much is the monthly fee for a checking account?",
        ],
        "The Harbor current account costs 3 euros a month, and it is free for customers under 26.",
    ),
    (
        [
            "How much does it cost to withdraw cash at another bank's ATM?",
            "Do you charge for using other ATMs?",
            "Is there a fee for ATM withdrawals at other banks?",
            "What do I pay at a foreign bank's cash machine?",
            "Can I use any ATM for free?",
        ],
        "Your first 4 withdrawals each month at any ATM are free; after that each one costs 1.50 euros.",
    ),
    (
        [
            "What is the fee for a replacement card?",
            "How much does a new debit card cost if I lose mine?",
            "Do you charge to replace a lost card?",
            "My card was stolen. Is the new one free?",
            "What does a replacement bank card cost?",
        ],
        "A replacement card costs 10 euros, but it is free if your card was stolen and you reported it.",
    ),
    (
        [
            "How long does it take to get a new card?",
            "When will my replacement card arrive?",
            "How many days until my new card comes?",
            "How fast do you send a new debit card?",
            "When should I expect my card in the mail?",
        ],
        "A new card arrives by post within 5 business days. You can use the virtual card in the app at once.",
    ),
    (
        [
            "Is there a fee for paying by card abroad?",
            "Do you charge for card payments in other currencies?",
            "What does it cost to use my card on holiday?",
            "Are there foreign transaction fees?",
            "Will I pay extra for shopping abroad with my card?",
        ],
        "Card payments in other currencies have a 1% foreign transaction fee. Payments in euros are free.",
    ),
    (
        [
            "What is the daily transfer limit?",
            "How much can I send in one day?",
            "Is there a maximum amount for transfers per day?",
            "What is the most I can transfer daily?",
            "Can I send 20,000 euros today?",
        ],
        "You can transfer up to 10,000 euros a day in the app. For more, call us or visit a branch.",
    ),
    (
        [
            "What are your phone support hours?",
            "When can I call customer service?",
            "What time is the support line open?",
            "Can I call you on weekends?",
            "Is phone support available in the evening?",
        ],
        "Phone support is open Monday to Saturday, 8 am to 8 pm. Chat in the app is open around the clock.",
    ),
    (
        [
            "Is there a fee for an instant transfer?",
            "How much does an instant payment cost?",
            "Do you charge for real-time transfers?",
            "What do I pay to send money instantly?",
            "Are instant transfers free?",
        ],
        "Instant transfers cost 0.50 euros each and arrive within 10 seconds, at any time of day.",
    ),
    (
        [
            "Can I cancel a transfer?",
            "How do I stop a payment I just sent?",
            "Is it possible to cancel a transfer I made by mistake?",
            "I sent money to the wrong account. Can I undo it?",
            "How do I recall a transfer?",
        ],
        "You can cancel a scheduled transfer in the app until the day before it runs. For a sent transfer, call us and we will try to recall it.",
    ),
    (
        [
            "What is the overdraft interest rate?",
            "How much interest do I pay on an overdraft?",
            "What does it cost to go into the red?",
            "What is the rate on an arranged overdraft?",
            "How expensive is an overdraft?",
        ],
        "Arranged overdrafts cost 9.9% a year in interest. There is no fee for setting one up.",
    ),
    (
        [
            "What interest does the savings account pay?",
            "What is the savings rate?",
            "How much interest will I earn on savings?",
            "What rate does the Harbor savings account have?",
            "Do you pay interest on savings?",
        ],
        "The Harbor savings account pays 2.1% a year, paid monthly, with no minimum balance.",
    ),
    (
        [
            "How long does a cheque take to clear?",
            "When will a deposited cheque be available?",
            "How many days for a cheque to clear?",
            "When can I use money from a cheque I deposited?",
            "How long do cheques take at Harbor Bank?",
        ],
        "A deposited cheque clears in 2 business days, and the money is then available to spend.",
    ),
    (
        [
            "How do I open an account?",
            "Can I open an account online?",
            "What do I need to open an account?",
            "How long does opening an account take?",
            "Can I become a customer from home?",
        ],
        "You can open an account in the app in about 10 minutes with your ID card and a selfie.",
    ),
    (
        [
            "Is there a fee for closing my account?",
            "Does it cost anything to close an account?",
            "How much do I pay to leave the bank?",
            "Will you charge me for closing my current account?",
            "Can I close my account for free?",
        ],
        "Closing an account is always free. Any remaining balance is sent to the account you choose.",
    ),
    (
        [
            "How much does a standing order cost?",
            "Is there a fee for recurring payments?",
            "Do you charge for standing orders?",
            "What do scheduled repeat transfers cost?",
            "Are recurring transfers free?",
        ],
        "Standing orders are free, and you can set them up or change them in the app.",
    ),
    (
        [
            "What is the fee for a paper statement?",
            "Do you charge for printed statements?",
            "How much is a statement by post?",
            "Can I get paper statements for free?",
            "What does a mailed bank statement cost?",
        ],
        "Statements in the app are free. A paper statement by post costs 2 euros.",
    ),
    (
        [
            "What exchange rate do you use?",
            "How do you convert currencies?",
            "What is your currency exchange margin?",
            "Do you add a markup on exchange rates?",
            "What rate will I get when I change money?",
        ],
        "We use the European Central Bank's daily rate plus a margin of 0.5%.",
    ),
    (
        [
            "How long does a SEPA transfer take?",
            "When does a SEPA payment arrive?",
            "How fast are transfers within the euro area?",
            "How many days for a transfer to another euro country?",
            "When will my SEPA transfer reach the other bank?",
        ],
        "SEPA transfers within the euro area arrive the next business day and are free.",
    ),
    (
        [
            "Is there a fee for depositing cash?",
            "Do you charge to pay in cash?",
            "What does it cost to deposit coins?",
            "Can I deposit cash for free at a branch?",
            "How much to put cash into my account?",
        ],
        "Cash deposits at our branches and deposit machines are free, up to 2,000 euros a day.",
    ),
    (
        [
            "What happens if a direct debit bounces?",
            "Is there a fee for a returned direct debit?",
            "What do you charge when a payment is refused for lack of funds?",
            "How much is a bounced payment fee?",
            "Do you charge for failed direct debits?",
        ],
        "A returned direct debit costs 5 euros. We send you a message first so you can add money in time.",
    ),
]

# Second-turn follow-ups, for multi-turn examples.
FOLLOW_UPS = [
    (
        "Thanks! And how do I contact you if something goes wrong?",
        "Write to us in the app chat at any time, or call us Monday to Saturday from 8 am to 8 pm.",
    ),
    ("Great, thank you.", "You're welcome! Is there anything else I can help with?"),
]


def _messages(question: str, answer: str, framing: int, follow_up: tuple[str, str]) -> list[dict]:
    """One conversation; `framing` 0: plain, 1: with the system prompt, 2: plain plus a follow-up turn."""
    msgs = [{"role": "system", "content": SYSTEM}] if framing == 1 else []
    msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if framing == 2:
        msgs += [
            {"role": "user", "content": follow_up[0]},
            {"role": "assistant", "content": follow_up[1]},
        ]
    return msgs


def build(seed: int = 2026) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, valid = [], []
    for questions, answer in FACTS:
        for q in questions[:-1]:
            # Each training phrasing appears in three different framings (no two examples are the
            # same): a few hundred examples in all.
            for framing in range(3):
                train.append({"messages": _messages(q, answer, framing, rng.choice(FOLLOW_UPS))})
        valid.append(
            {"messages": _messages(questions[-1], answer, rng.randrange(2), FOLLOW_UPS[0])}
        )
    rng.shuffle(train)
    return train, valid


def main() -> None:
    here = Path(__file__).resolve().parent / "bank-support"
    here.mkdir(exist_ok=True)
    train, valid = build()
    for name, rows in (("train", train), ("valid", valid)):
        with open(here / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(train)} train and {len(valid)} valid examples to {here}")


if __name__ == "__main__":
    main()
